//! Password recovery and email verification: the tokens that go out in
//! events, and the rules for using them.

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use diesel::{ExpressionMethods as _, QueryDsl as _};
use diesel_async::RunQueryDsl as _;
use keel::{
    auth::v1::{self as pb},
    events::v1::{EmailVerificationRequested, PasswordResetRequested, event::Payload},
};
use keel_auth::schema::one_time_tokens;
use keel_platform::events::outbox::outbox;
use keel_testkit::Suite;
use keel_testkit::status::{reason, violated_fields};
use tonic::{Code, Status};

const PASSWORD: &str = "correct horse battery staple";
const NEW_PASSWORD: &str = "a brand new passphrase";

async fn reset_requests(suite: &Suite) -> anyhow::Result<Vec<PasswordResetRequested>> {
    let count: i64 = outbox::table
        .filter(outbox::event_type.eq("user.password_reset_requested"))
        .count()
        .get_result(&mut suite.auth_db().await?)
        .await?;
    let requests: Vec<_> = suite
        .auth_events(None)
        .await?
        .into_iter()
        .filter_map(|event| match event.payload {
            Some(Payload::PasswordResetRequested(request)) => Some(request),
            _ => None,
        })
        .collect();
    assert_eq!(requests.len() as i64, count, "event_type matches the payload");
    Ok(requests)
}

async fn verification_requests(suite: &Suite) -> anyhow::Result<Vec<EmailVerificationRequested>> {
    Ok(suite
        .auth_events(None)
        .await?
        .into_iter()
        .filter_map(|event| match event.payload {
            Some(Payload::EmailVerificationRequested(request)) => Some(request),
            _ => None,
        })
        .collect())
}

/// The token a reset request carries, opened as the service that mails it
/// opens it.
fn reset_token(suite: &Suite, request: &PasswordResetRequested) -> anyhow::Result<String> {
    suite.open_token(&Payload::PasswordResetRequested(request.clone()))
}

/// The token a verification request carries.
fn verification_token(suite: &Suite, request: &EmailVerificationRequested) -> anyhow::Result<String> {
    suite.open_token(&Payload::EmailVerificationRequested(request.clone()))
}

async fn request_reset(suite: &Suite, email: &str) -> Result<pb::RequestPasswordResetResponse, Status> {
    let request = pb::RequestPasswordResetRequest { email: email.into() };
    Ok(suite.auth().request_password_reset(request).await?.into_inner())
}

/// Asks for a reset of `email` and returns the token that was mailed.
async fn reset_token_for(suite: &Suite, email: &str) -> anyhow::Result<String> {
    request_reset(suite, email).await?;
    let newest = reset_requests(suite).await?.pop().expect("a reset event");
    assert_eq!(newest.email, email);
    reset_token(suite, &newest)
}

async fn reset_password(suite: &Suite, token: &str, new_password: &str) -> Result<(), Status> {
    let request = pb::ResetPasswordRequest {
        token: token.into(),
        new_password: new_password.into(),
    };
    suite.auth().reset_password(request).await.map(drop)
}

async fn verify_email(suite: &Suite, token: &str) -> Result<pb::User, Status> {
    let request = pb::VerifyEmailRequest { token: token.into() };
    Ok(suite
        .auth()
        .verify_email(request)
        .await?
        .into_inner()
        .user
        .expect("a user"))
}

async fn login_status(suite: &Suite, email: &str, password: &str) -> Result<(), Status> {
    let request = pb::LoginRequest {
        email: email.into(),
        password: password.into(),
    };
    suite.auth().login(request).await.map(drop)
}

fn assert_invalid_token(status: &Status) {
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reason(status), "INVALID_TOKEN");
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_request_answers_alike_for_registered_and_unknown_emails() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let user = suite.register("member@example.com", PASSWORD).await?;

    let registered = request_reset(&suite, "Member@Example.com").await?;
    let unknown = request_reset(&suite, "stranger@example.com").await?;
    assert_eq!(registered, unknown);

    let requests = reset_requests(&suite).await?;
    assert_eq!(requests.len(), 1, "an event only for the registered email");
    assert_eq!(requests[0].user_id, user.id);
    assert_eq!(requests[0].email, "member@example.com");
    assert!(!reset_token(&suite, &requests[0])?.is_empty());
    let expires = requests[0].expire_time.expect("an expiry").seconds;
    let now = chrono::Utc::now().timestamp();
    assert!((now + 55 * 60..=now + 65 * 60).contains(&expires), "about an hour");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_request_for_a_disabled_user_sends_nothing() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let (_, admin) = suite.signed_in_admin().await?;
    let user = suite.register("banned@example.com", PASSWORD).await?;
    let request = keel_testkit::authorized(pb::DisableUserRequest { user_id: user.id }, &admin.access_token);
    suite.auth().disable_user(request).await?;

    request_reset(&suite, "banned@example.com").await?;
    assert!(reset_requests(&suite).await?.is_empty());
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_password_sets_the_new_password_and_ends_every_session() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    suite.register("forgot@example.com", PASSWORD).await?;
    let sessions = [
        suite
            .login("forgot@example.com", PASSWORD)
            .await?
            .tokens
            .expect("tokens"),
        suite
            .login("forgot@example.com", PASSWORD)
            .await?
            .tokens
            .expect("tokens"),
    ];
    let token = reset_token_for(&suite, "forgot@example.com").await?;

    reset_password(&suite, &token, NEW_PASSWORD).await?;

    for session in sessions {
        let refresh = pb::RefreshRequest {
            refresh_token: session.refresh_token,
        };
        let status = suite.auth().refresh(refresh).await.expect_err("every session ended");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let status = login_status(&suite, "forgot@example.com", PASSWORD)
        .await
        .expect_err("old password");
    assert_eq!(reason(&status), "INVALID_CREDENTIALS");
    login_status(&suite, "forgot@example.com", NEW_PASSWORD).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_token_works_only_once() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    suite.register("once@example.com", PASSWORD).await?;
    let token = reset_token_for(&suite, "once@example.com").await?;
    reset_password(&suite, &token, NEW_PASSWORD).await?;

    let status = reset_password(&suite, &token, "yet another passphrase")
        .await
        .expect_err("spent");
    assert_invalid_token(&status);
    login_status(&suite, "once@example.com", NEW_PASSWORD).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_reset_token_is_refused() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    suite.register("late@example.com", PASSWORD).await?;
    let token = reset_token_for(&suite, "late@example.com").await?;
    diesel::update(one_time_tokens::table.filter(one_time_tokens::purpose.eq("password_reset")))
        .set(one_time_tokens::expires_at.eq(diesel::dsl::sql("now() - interval '1 minute'")))
        .execute(&mut suite.auth_db().await?)
        .await?;

    assert_invalid_token(&reset_password(&suite, &token, NEW_PASSWORD).await.expect_err("expired"));
    login_status(&suite, "late@example.com", PASSWORD).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_reset_request_replaces_the_older_token() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    suite.register("twice@example.com", PASSWORD).await?;
    let older = reset_token_for(&suite, "twice@example.com").await?;
    let newer = reset_token_for(&suite, "twice@example.com").await?;
    assert_ne!(older, newer);

    assert_invalid_token(
        &reset_password(&suite, &older, NEW_PASSWORD)
            .await
            .expect_err("replaced"),
    );
    reset_password(&suite, &newer, NEW_PASSWORD).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_new_password_leaves_the_reset_token_usable() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    suite.register("retry@example.com", PASSWORD).await?;
    let token = reset_token_for(&suite, "retry@example.com").await?;

    let status = reset_password(&suite, &token, "short").await.expect_err("too short");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), vec!["new_password"]);
    reset_password(&suite, &token, NEW_PASSWORD).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_or_malformed_reset_tokens_are_refused() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let never_issued = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, [7u8; 32]);
    assert_invalid_token(
        &reset_password(&suite, &never_issued, NEW_PASSWORD)
            .await
            .expect_err("unknown"),
    );

    let status = reset_password(&suite, "not a token", NEW_PASSWORD)
        .await
        .expect_err("malformed");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), vec!["token"]);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_email_with_the_registration_token_marks_the_address_verified() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    let user = suite.register("verify@example.com", PASSWORD).await?;
    assert!(!user.email_verified);
    let requests = verification_requests(&suite).await?;
    assert_eq!(requests.len(), 1);

    let token = verification_token(&suite, &requests[0])?;
    let verified = verify_email(&suite, &token).await?;
    assert_eq!(verified.id, user.id);
    assert!(verified.email_verified);
    let login = suite.login("verify@example.com", PASSWORD).await?;
    assert!(login.user.expect("a user").email_verified);

    assert_invalid_token(&verify_email(&suite, &token).await.expect_err("spent"));
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_only_serve_their_own_purpose() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_holding_events(&[]).await?;
    suite.register("purpose@example.com", PASSWORD).await?;
    let verification = verification_token(
        &suite,
        &verification_requests(&suite)
            .await?
            .pop()
            .expect("a verification event"),
    )?;
    let reset = reset_token_for(&suite, "purpose@example.com").await?;

    assert_invalid_token(
        &reset_password(&suite, &verification, NEW_PASSWORD)
            .await
            .expect_err("wrong purpose"),
    );
    assert_invalid_token(&verify_email(&suite, &reset).await.expect_err("wrong purpose"));
    // Both still work for what they were made for.
    verify_email(&suite, &verification).await?;
    reset_password(&suite, &reset, NEW_PASSWORD).await?;
    suite.stop().await
}
