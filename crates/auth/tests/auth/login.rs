//! Login: the token pair, indistinguishable failures, throttling per account
//! and per client address, disabled users, and password hashes.
//!
//! Throttling is per client address, so tests that must tell accounts and
//! addresses apart connect from other loopback addresses (127.0.0.2, ...).

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use keel_testkit::status::reason;
use std::time::Duration;

use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{PasswordHasher as _, phc::PasswordHash},
};
use diesel::{ExpressionMethods as _, QueryDsl as _};
use diesel_async::RunQueryDsl as _;
use keel::auth::v1::{self as pb, auth_service_client::AuthServiceClient};
use keel_auth::schema::users;
use keel_testkit::{Suite, authorized};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt as _;

const PASSWORD: &str = "correct horse battery staple";
const WRONG: &str = "wrong horse battery staple";

/// A client whose calls come from `ip` (any 127.x.y.z address is loopback).
async fn client_from(suite: &Suite, ip: &str) -> anyhow::Result<AuthServiceClient<Channel>> {
    let channel = Channel::from_shared(format!("http://{}", suite.auth_addr()))?
        .local_address(Some(ip.parse()?))
        .connect()
        .await?;
    Ok(AuthServiceClient::new(channel))
}

async fn login(
    client: &mut AuthServiceClient<Channel>,
    email: &str,
    password: &str,
) -> Result<pb::LoginResponse, Status> {
    let request = pb::LoginRequest {
        email: email.into(),
        password: password.into(),
    };
    Ok(client.login(request).await?.into_inner())
}

fn assert_throttled(status: &Status) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(status), "TOO_MANY_ATTEMPTS");
    let delay = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a RetryInfo delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(15 * 60),
        "{delay:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn login_returns_a_bearer_token_pair_signed_with_a_published_key() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let user = suite.register("pair@example.com", PASSWORD).await?;
    let response = login(&mut suite.auth(), "Pair@Example.com", PASSWORD).await?;

    assert_eq!(response.user.expect("a user").id, user.id);
    let tokens = response.tokens.expect("tokens");
    assert_eq!(tokens.token_type, "Bearer");
    assert!(!tokens.refresh_token.is_empty());
    assert!(uuid::Uuid::parse_str(&tokens.session_id).is_ok());
    let access_expires = tokens.access_token_expire_time.expect("access expiry").seconds;
    let refresh_expires = tokens.refresh_token_expire_time.expect("refresh expiry").seconds;
    let now = chrono::Utc::now().timestamp();
    assert!((now + 14 * 60..=now + 16 * 60).contains(&access_expires), "15 minutes");
    assert!(
        (now + 6 * 86_400..=now + 8 * 86_400).contains(&refresh_expires),
        "7 days: the idle timeout"
    );

    let header = jsonwebtoken::decode_header(&tokens.access_token)?;
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    let kid = header.kid.expect("the header names its key");
    let jwks = suite.auth().get_jwks(pb::GetJwksRequest {}).await?.into_inner();
    assert!(jwks.keys.iter().any(|key| key.kid == kid), "kid {kid} is published");
    assert!(
        jwks.keys
            .iter()
            .all(|key| key.kty == "OKP" && key.crv == "Ed25519" && key.alg == "EdDSA")
    );

    // The access token works on an authenticated call.
    let sessions = suite
        .auth()
        .list_sessions(authorized(pb::ListSessionsRequest::default(), &tokens.access_token))
        .await?;
    assert_eq!(sessions.into_inner().sessions.len(), 1);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_email_and_wrong_password_fail_alike() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    suite.register("known@example.com", PASSWORD).await?;
    let mut auth = suite.auth();

    let unknown = login(&mut auth, "unknown@example.com", PASSWORD)
        .await
        .expect_err("unknown email");
    let wrong = login(&mut auth, "known@example.com", WRONG)
        .await
        .expect_err("wrong password");

    for status in [&unknown, &wrong] {
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(reason(status), "INVALID_CREDENTIALS");
    }
    assert_eq!(unknown.message(), wrong.message());
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn five_failures_lock_that_address_out_of_the_account_even_for_the_right_password() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    suite.register("locked@example.com", PASSWORD).await?;
    let mut attacker = suite.auth();
    for _ in 0..5 {
        let status = login(&mut attacker, "locked@example.com", WRONG)
            .await
            .expect_err("wrong");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    // The right password from there waits too: guessing it is what is stopped.
    let status = login(&mut attacker, "locked@example.com", PASSWORD)
        .await
        .expect_err("locked");
    assert_throttled(&status);

    // The owner, from another address, is not held back.
    let mut owner = client_from(&suite, "127.0.0.2").await?;
    login(&mut owner, "locked@example.com", PASSWORD).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_failures_from_one_address_lock_that_address() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    suite.register("sprayed@example.com", PASSWORD).await?;
    let mut sprayer = suite.auth();
    for i in 0..20 {
        let status = login(&mut sprayer, &format!("victim-{i}@example.com"), PASSWORD)
            .await
            .expect_err("unknown");
        assert_eq!(status.code(), Code::Unauthenticated);
    }

    let status = login(&mut sprayer, "sprayed@example.com", PASSWORD)
        .await
        .expect_err("the address is locked");
    assert_throttled(&status);
    // The account itself is fine from elsewhere.
    login(
        &mut client_from(&suite, "127.0.0.2").await?,
        "sprayed@example.com",
        PASSWORD,
    )
    .await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn login_max_failures_is_configurable() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_with(&["--login-max-failures", "3"]).await?;
    suite.register("three@example.com", PASSWORD).await?;
    let mut auth = suite.auth();
    for _ in 0..3 {
        login(&mut auth, "three@example.com", WRONG).await.expect_err("wrong");
    }
    assert_throttled(
        &login(&mut auth, "three@example.com", PASSWORD)
            .await
            .expect_err("locked"),
    );
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn successful_login_clears_the_account_failures() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_with(&["--login-slowdown-after", "6"]).await?;
    suite.register("forgetful@example.com", PASSWORD).await?;
    // Two addresses, so that neither address reaches its own limit.
    for ip in ["127.0.0.2", "127.0.0.3"] {
        let mut client = client_from(&suite, ip).await?;
        for _ in 0..4 {
            login(&mut client, "forgetful@example.com", WRONG)
                .await
                .expect_err("wrong");
        }
        // Eight failures in all would slow the account down; four at a time do not.
        login(&mut client, "forgetful@example.com", PASSWORD).await?;
    }
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn over_long_password_at_login_is_invalid_argument() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let status = login(&mut suite.auth(), "someone@example.com", &"x".repeat(1025))
        .await
        .expect_err("too long");
    assert_eq!(status.code(), Code::InvalidArgument);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn disabled_user_cannot_log_in_or_refresh() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, admin) = suite.signed_in_admin().await?;
    let user = suite.register("gone@example.com", PASSWORD).await?;
    let tokens = suite.login("gone@example.com", PASSWORD).await?.tokens.expect("tokens");
    suite
        .auth()
        .disable_user(authorized(
            pb::DisableUserRequest { user_id: user.id },
            &admin.access_token,
        ))
        .await?;

    let mut auth = suite.auth();
    let status = login(&mut auth, "gone@example.com", PASSWORD)
        .await
        .expect_err("disabled");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "USER_DISABLED");
    // A wrong password does not reveal that the account exists.
    let status = login(&mut auth, "gone@example.com", WRONG).await.expect_err("wrong");
    assert_eq!(reason(&status), "INVALID_CREDENTIALS");

    let status = auth
        .refresh(pb::RefreshRequest {
            refresh_token: tokens.refresh_token,
        })
        .await
        .expect_err("disabled");
    assert_eq!(status.code(), Code::Unauthenticated);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_checks_the_disabled_flag_itself() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    suite.register("flagged@example.com", PASSWORD).await?;
    let tokens = suite
        .login("flagged@example.com", PASSWORD)
        .await?
        .tokens
        .expect("tokens");
    // Disabled behind the service's back: the session is still active.
    diesel::update(users::table.filter(users::email.eq("flagged@example.com")))
        .set(users::disabled.eq(true))
        .execute(&mut suite.auth_db().await?)
        .await?;

    let status = suite
        .auth()
        .refresh(pb::RefreshRequest {
            refresh_token: tokens.refresh_token,
        })
        .await
        .expect_err("disabled");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "USER_DISABLED");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_hash_is_argon2id_at_least_at_owasp_cost() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    suite.register("hashed@example.com", PASSWORD).await?;
    let stored = suite.stored_password_hash("hashed@example.com").await?;

    let phc = PasswordHash::new(&stored).map_err(|err| anyhow::anyhow!("not a PHC string: {err}"))?;
    assert_eq!(phc.algorithm.as_str(), "argon2id");
    let params = Params::try_from(&phc).map_err(|err| anyhow::anyhow!("argon2 params: {err}"))?;
    assert!(params.m_cost() >= 19_456, "m={}", params.m_cost());
    assert!(params.t_cost() >= 2, "t={}", params.t_cost());
    assert!(params.p_cost() >= 1, "p={}", params.p_cost());
    assert!(!stored.contains(PASSWORD));
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn weaker_hash_is_upgraded_at_the_next_login() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    suite.register("legacy@example.com", PASSWORD).await?;
    let weak = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(4096, 1, 1, None)?)
        .hash_password(PASSWORD.as_bytes())
        .map_err(|err| anyhow::anyhow!("hashing: {err}"))?
        .to_string();
    assert!(weak.starts_with("$argon2id$v=19$m=4096,t=1,p=1$"), "{weak}");
    diesel::update(users::table.filter(users::email.eq("legacy@example.com")))
        .set(users::password_hash.eq(&weak))
        .execute(&mut suite.auth_db().await?)
        .await?;

    suite.login("legacy@example.com", PASSWORD).await?;

    let upgraded = suite.stored_password_hash("legacy@example.com").await?;
    assert!(upgraded.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{upgraded}");
    // And the upgraded hash still matches the password.
    suite.login("legacy@example.com", PASSWORD).await?;
    assert_eq!(
        suite.stored_password_hash("legacy@example.com").await?,
        upgraded,
        "no needless rehash"
    );
    suite.stop().await
}
