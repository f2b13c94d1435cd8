//! Admin RPCs (SetUserRoles, DisableUser) and service tokens
//! (IssueServiceToken).

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use keel::auth::v1::{self as pb};
use keel_testkit::status::{reason, violated_fields};
use keel_testkit::{
    Suite, authorized,
    suite::{TEST_CLIENT_ID, TEST_CLIENT_SCOPES, TEST_CLIENT_SECRET},
};
use tonic::{Code, Status};

const PASSWORD: &str = "correct horse battery staple";

fn maybe_authorized<T>(message: T, access_token: Option<&str>) -> tonic::Request<T> {
    match access_token {
        Some(token) => authorized(message, token),
        None => tonic::Request::new(message),
    }
}

async fn set_roles(
    suite: &Suite,
    access_token: Option<&str>,
    user_id: &str,
    roles: &[pb::Role],
) -> Result<pb::User, Status> {
    let request = pb::SetUserRolesRequest {
        user_id: user_id.into(),
        roles: roles.iter().map(|role| *role as i32).collect(),
    };
    let response = suite
        .auth()
        .set_user_roles(maybe_authorized(request, access_token))
        .await?;
    Ok(response.into_inner().user.expect("a user"))
}

async fn disable(suite: &Suite, access_token: Option<&str>, user_id: &str) -> Result<pb::User, Status> {
    let request = pb::DisableUserRequest {
        user_id: user_id.into(),
    };
    let response = suite
        .auth()
        .disable_user(maybe_authorized(request, access_token))
        .await?;
    Ok(response.into_inner().user.expect("a user"))
}

async fn service_token(
    suite: &Suite,
    id: &str,
    secret: &str,
    scopes: &[&str],
) -> Result<pb::IssueServiceTokenResponse, Status> {
    let request = pb::IssueServiceTokenRequest {
        client_id: id.into(),
        client_secret: secret.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
    };
    Ok(suite.auth().issue_service_token(request).await?.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_rpcs_without_a_token_are_unauthenticated() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (user, _) = suite.signed_in_user().await?;
    let status = set_roles(&suite, None, &user.id, &[pb::Role::Admin])
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = disable(&suite, None, &user.id).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_rpcs_with_a_user_token_are_permission_denied() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let user = suite.register("plain@example.com", PASSWORD).await?;
    let tokens = suite
        .login("plain@example.com", PASSWORD)
        .await?
        .tokens
        .expect("tokens");
    let (victim, victim_tokens) = suite.signed_in_user().await?;
    let token = Some(tokens.access_token.as_str());

    // Not even for oneself.
    let status = set_roles(&suite, token, &user.id, &[pb::Role::Admin])
        .await
        .expect_err("not admin");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "ADMIN_REQUIRED");
    let status = disable(&suite, token, &victim.id).await.expect_err("not admin");
    assert_eq!(status.code(), Code::PermissionDenied);

    // Nothing changed.
    let login = suite.login("plain@example.com", PASSWORD).await?;
    assert_eq!(login.user.expect("a user").roles, vec![pb::Role::User as i32]);
    suite.refresh(&victim_tokens.refresh_token).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_sets_roles_which_apply_at_once() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, admin) = suite.signed_in_admin().await?;
    let user = suite.register("promoted@example.com", PASSWORD).await?;
    let before = suite
        .login("promoted@example.com", PASSWORD)
        .await?
        .tokens
        .expect("tokens");

    let changed = set_roles(
        &suite,
        Some(&admin.access_token),
        &user.id,
        &[pb::Role::Admin, pb::Role::User],
    )
    .await?;
    assert_eq!(changed.id, user.id);
    assert_eq!(changed.roles, vec![pb::Role::User as i32, pb::Role::Admin as i32]);

    // The token issued with the old roles is refused (as a user's until its
    // revocation arrives, as revoked after: tests/revocation.rs); a new one
    // has the new roles.
    let status = set_roles(&suite, Some(&before.access_token), &user.id, &[pb::Role::User])
        .await
        .expect_err("the old token is a user's");
    assert!(
        matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated),
        "{status:?}"
    );
    let after = suite.refresh(&before.refresh_token).await?;
    let demoted = set_roles(&suite, Some(&after.access_token), &user.id, &[pb::Role::User]).await?;
    assert_eq!(demoted.roles, vec![pb::Role::User as i32]);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn set_roles_refuses_unspecified_unknown_or_no_roles() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, admin) = suite.signed_in_admin().await?;
    let (user, _) = suite.signed_in_user().await?;
    let token = Some(admin.access_token.as_str());

    for roles in [
        vec![pb::Role::Unspecified],
        vec![pb::Role::User, pb::Role::Unspecified],
        vec![],
    ] {
        let status = set_roles(&suite, token, &user.id, &roles).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{roles:?}");
        assert_eq!(violated_fields(&status), vec!["roles"], "{roles:?}");
    }
    let request = pb::SetUserRolesRequest {
        user_id: user.id.clone(),
        roles: vec![42],
    };
    let status = suite
        .auth()
        .set_user_roles(authorized(request, &admin.access_token))
        .await
        .expect_err("not a role");
    assert_eq!(status.code(), Code::InvalidArgument);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn set_roles_of_an_unknown_user_is_not_found() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, admin) = suite.signed_in_admin().await?;
    let token = Some(admin.access_token.as_str());
    let status = set_roles(&suite, token, &uuid::Uuid::now_v7().to_string(), &[pb::Role::User])
        .await
        .expect_err("no such user");
    assert_eq!(status.code(), Code::NotFound);
    let status = set_roles(&suite, token, "not-a-uuid", &[pb::Role::User])
        .await
        .expect_err("malformed");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), vec!["user_id"]);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_disables_a_user_ending_their_sessions_and_logins() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, admin) = suite.signed_in_admin().await?;
    let user = suite.register("rogue@example.com", PASSWORD).await?;
    let sessions = [
        suite
            .login("rogue@example.com", PASSWORD)
            .await?
            .tokens
            .expect("tokens"),
        suite
            .login("rogue@example.com", PASSWORD)
            .await?
            .tokens
            .expect("tokens"),
    ];

    let disabled = disable(&suite, Some(&admin.access_token), &user.id).await?;
    assert!(disabled.disabled);
    assert_eq!(disabled.id, user.id);

    for session in &sessions {
        let status = suite.refresh(&session.refresh_token).await.expect_err("session ended");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let status = suite.login("rogue@example.com", PASSWORD).await.expect_err("disabled");
    let status = status.downcast_ref::<Status>().expect("a gRPC status");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(status), "USER_DISABLED");

    // Idempotent.
    assert!(disable(&suite, Some(&admin.access_token), &user.id).await?.disabled);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn disabling_an_unknown_user_is_not_found() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, admin) = suite.signed_in_admin().await?;
    let status = disable(&suite, Some(&admin.access_token), &uuid::Uuid::now_v7().to_string())
        .await
        .expect_err("no such user");
    assert_eq!(status.code(), Code::NotFound);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_cannot_disable_themselves() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (admin_user, admin) = suite.signed_in_admin().await?;
    let status = disable(&suite, Some(&admin.access_token), &admin_user.id)
        .await
        .expect_err("self");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), "CANNOT_DISABLE_SELF");
    // Still an active administrator.
    suite.refresh(&admin.refresh_token).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn service_client_gets_a_token_with_its_scopes() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let all: Vec<&str> = TEST_CLIENT_SCOPES.split_whitespace().collect();

    let issued = service_token(&suite, TEST_CLIENT_ID, TEST_CLIENT_SECRET, &[]).await?;
    assert_eq!(issued.scopes, all, "no scopes asked: every allowed scope");
    assert!(issued.expire_time.is_some());
    let header = jsonwebtoken::decode_header(&issued.access_token)?;
    let jwks = suite.auth().get_jwks(pb::GetJwksRequest {}).await?.into_inner();
    assert!(jwks.keys.iter().any(|key| Some(&key.kid) == header.kid.as_ref()));

    let narrow = service_token(&suite, TEST_CLIENT_ID, TEST_CLIENT_SECRET, &["accounts.debit"]).await?;
    assert_eq!(narrow.scopes, vec!["accounts.debit"]);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_client_credentials_are_unauthenticated() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    for (id, secret) in [
        (TEST_CLIENT_ID, "not-the-secret-0123456789"),
        (TEST_CLIENT_ID, ""),
        ("someone-else", TEST_CLIENT_SECRET),
    ] {
        let status = service_token(&suite, id, secret, &[]).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{id}");
        assert_eq!(reason(&status), "INVALID_CLIENT");
        assert!(!status.message().contains(TEST_CLIENT_SECRET));
    }
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn scope_the_client_may_not_have_is_permission_denied() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let status = service_token(
        &suite,
        TEST_CLIENT_ID,
        TEST_CLIENT_SECRET,
        &["accounts.debit", "admin.everything"],
    )
    .await
    .expect_err("not allowed");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "SCOPE_NOT_ALLOWED");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn service_token_cannot_act_as_a_user() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (user, _) = suite.signed_in_user().await?;
    let token = service_token(&suite, TEST_CLIENT_ID, TEST_CLIENT_SECRET, &[])
        .await?
        .access_token;

    let status = suite
        .auth()
        .list_sessions(authorized(pb::ListSessionsRequest::default(), &token))
        .await
        .expect_err("not a user");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "USER_TOKEN_REQUIRED");
    let status = set_roles(&suite, Some(&token), &user.id, &[pb::Role::Admin])
        .await
        .expect_err("not an admin");
    assert_eq!(status.code(), Code::PermissionDenied);
    suite.stop().await
}
