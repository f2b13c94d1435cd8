//! The request rules auth's protos declare (buf.validate), each broken once
//! over gRPC: INVALID_ARGUMENT with the field and the rule, before any
//! handler runs. The happy paths are the other tests.

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use keel::auth::v1 as pb;
use keel_testkit::{authorized, status::assert_rule};

const UUID: &str = "0190b6a4-0000-7000-8000-000000000000";

#[tokio::test(flavor = "multi_thread")]
async fn every_rule_is_enforced_with_its_field_and_rule() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, admin) = suite.signed_in_admin().await?;
    let token = admin.access_token.as_str();
    let mut auth = suite.auth();

    let register = |email: &str, password: &str| pb::RegisterRequest {
        request_id: String::new(),
        email: email.into(),
        password: password.into(),
    };
    let cases: Vec<(&str, Result<(), tonic::Status>, &str, &str)> = vec![
        (
            "register: no email",
            auth.register(register("", "long enough password")).await.map(drop),
            "email",
            "string.pattern",
        ),
        (
            "register: not an email",
            auth.register(register("ada.example.com", "long enough password"))
                .await
                .map(drop),
            "email",
            "string.pattern",
        ),
        (
            "register: a short password",
            auth.register(register("ada@example.com", "short")).await.map(drop),
            "password",
            "string.min_len",
        ),
        (
            "register: a control character in the key",
            auth.register(pb::RegisterRequest {
                request_id: "a\u{7}".into(),
                ..register("ada@example.com", "long enough password")
            })
            .await
            .map(drop),
            "request_id",
            "string.pattern",
        ),
        (
            "login: empty password",
            auth.login(pb::LoginRequest {
                email: "ada@example.com".into(),
                password: String::new(),
            })
            .await
            .map(drop),
            "password",
            "string.min_len",
        ),
        (
            "refresh: empty token",
            auth.refresh(pb::RefreshRequest {
                refresh_token: String::new(),
            })
            .await
            .map(drop),
            "refresh_token",
            "string.pattern",
        ),
        (
            "logout: not a token",
            auth.logout(pb::LogoutRequest {
                refresh_token: "x".into(),
            })
            .await
            .map(drop),
            "refresh_token",
            "string.pattern",
        ),
        (
            "list sessions: a negative page size",
            auth.list_sessions(authorized(
                pb::ListSessionsRequest {
                    page_size: -1,
                    page_token: String::new(),
                },
                token,
            ))
            .await
            .map(drop),
            "page_size",
            "int32.gte",
        ),
        (
            "revoke session: not a UUID",
            auth.revoke_session(authorized(pb::RevokeSessionRequest { session_id: "x".into() }, token))
                .await
                .map(drop),
            "session_id",
            "string.uuid",
        ),
        (
            "change password: a short new one",
            auth.change_password(authorized(
                pb::ChangePasswordRequest {
                    current_password: "whatever it was".into(),
                    new_password: "short".into(),
                },
                token,
            ))
            .await
            .map(drop),
            "new_password",
            "string.min_len",
        ),
        (
            "request reset: empty email",
            auth.request_password_reset(pb::RequestPasswordResetRequest { email: String::new() })
                .await
                .map(drop),
            "email",
            "string.pattern",
        ),
        (
            "reset password: empty token",
            auth.reset_password(pb::ResetPasswordRequest {
                token: String::new(),
                new_password: "long enough password".into(),
            })
            .await
            .map(drop),
            "token",
            "string.pattern",
        ),
        (
            "verify email: empty token",
            auth.verify_email(pb::VerifyEmailRequest { token: String::new() })
                .await
                .map(drop),
            "token",
            "string.pattern",
        ),
        (
            "set roles: not a UUID",
            auth.set_user_roles(authorized(
                pb::SetUserRolesRequest {
                    user_id: "x".into(),
                    roles: vec![pb::Role::User as i32],
                },
                token,
            ))
            .await
            .map(drop),
            "user_id",
            "string.uuid",
        ),
        (
            "set roles: none",
            auth.set_user_roles(authorized(
                pb::SetUserRolesRequest {
                    user_id: UUID.into(),
                    roles: vec![],
                },
                token,
            ))
            .await
            .map(drop),
            "roles",
            "repeated.min_items",
        ),
        (
            "set roles: ROLE_UNSPECIFIED",
            auth.set_user_roles(authorized(
                pb::SetUserRolesRequest {
                    user_id: UUID.into(),
                    roles: vec![pb::Role::Unspecified as i32],
                },
                token,
            ))
            .await
            .map(drop),
            "roles",
            "enum.not_in",
        ),
        (
            "set roles: an undefined role",
            auth.set_user_roles(authorized(
                pb::SetUserRolesRequest {
                    user_id: UUID.into(),
                    roles: vec![99],
                },
                token,
            ))
            .await
            .map(drop),
            "roles",
            "enum.defined_only",
        ),
        (
            "disable user: not a UUID",
            auth.disable_user(authorized(pb::DisableUserRequest { user_id: "x".into() }, token))
                .await
                .map(drop),
            "user_id",
            "string.uuid",
        ),
    ];
    for (case, result, field, rule) in cases {
        assert_rule(case, result, field, rule);
    }

    // Every broken rule is named at once.
    let status = auth
        .login(pb::LoginRequest {
            email: String::new(),
            password: String::new(),
        })
        .await
        .expect_err("an empty login");
    let fields = keel_testkit::status::violated_fields(&status);
    assert_eq!(fields, ["email", "password"]);

    // What keeps the rules goes through: the emails the domain normalizes too.
    suite
        .register("  Ada.Lovelace@Example.COM ", "long enough password")
        .await?;
    suite.stop().await
}
