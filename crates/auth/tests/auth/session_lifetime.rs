//! Sessions end: at their absolute lifetime from sign-in, however often they
//! are refreshed, and after an idle timeout without a refresh.

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::{ExpressionMethods as _, QueryDsl as _};
use diesel_async::RunQueryDsl as _;
use keel::auth::v1 as pb;
use keel_auth::schema::sessions;
use keel_testkit::{Suite, status::reason};
use tonic::Code;

const PASSWORD: &str = "correct horse battery staple";
const DAY: i64 = 86_400;

async fn signed_in(suite: &Suite, email: &str) -> anyhow::Result<pb::TokenPair> {
    suite.register(email, PASSWORD).await?;
    Ok(suite.login(email, PASSWORD).await?.tokens.expect("tokens"))
}

/// Moves the session's sign-in and last use back by the given seconds.
async fn age_session(suite: &Suite, session_id: &str, signed_in_ago: i64, used_ago: i64) -> anyhow::Result<()> {
    let id = uuid::Uuid::parse_str(session_id)?;
    let now = Utc::now();
    diesel::update(sessions::table.find(id))
        .set((
            sessions::created_at.eq(now - chrono::Duration::seconds(signed_in_ago)),
            sessions::last_used_at.eq(now - chrono::Duration::seconds(used_ago)),
        ))
        .execute(&mut suite.auth_db().await?)
        .await?;
    Ok(())
}

fn refresh_expiry(tokens: &pb::TokenPair) -> i64 {
    tokens
        .refresh_token_expire_time
        .as_ref()
        .expect("a refresh expiry")
        .seconds
}

fn assert_refused(status: &tonic::Status, expected: &str) {
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reason(status), expected, "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_ends_at_its_lifetime_however_often_it_is_refreshed() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let mut tokens = signed_in(&suite, "often@example.com").await?;
    let now = Utc::now().timestamp();
    // A fresh session's refresh token lasts the idle timeout (7 days).
    assert!((now + 7 * DAY - 60..=now + 7 * DAY + 60).contains(&refresh_expiry(&tokens)));

    // Signed in 29 days and 23 hours ago, refreshed every few minutes since:
    // a refresh still works, but the next token ends with the lifetime, in an
    // hour, not in another week.
    age_session(&suite, &tokens.session_id, 30 * DAY - 3600, 60).await?;
    for _ in 0..3 {
        tokens = suite.refresh(&tokens.refresh_token).await?;
        let now = Utc::now().timestamp();
        assert!(
            (now + 3600 - 60..=now + 3600).contains(&refresh_expiry(&tokens)),
            "{}",
            refresh_expiry(&tokens)
        );
    }

    // Past the lifetime, although it was used a minute ago.
    age_session(&suite, &tokens.session_id, 30 * DAY + 1, 60).await?;
    let status = suite.refresh(&tokens.refresh_token).await.expect_err("too old");
    assert_refused(&status, "SESSION_EXPIRED");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_session_cannot_refresh() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let mut tokens = signed_in(&suite, "idle@example.com").await?;

    // Last used six days ago: still alive, and the refresh counts as use.
    age_session(&suite, &tokens.session_id, 6 * DAY, 6 * DAY).await?;
    tokens = suite.refresh(&tokens.refresh_token).await?;

    // Then left alone for a week.
    age_session(&suite, &tokens.session_id, 13 * DAY, 7 * DAY + 1).await?;
    let status = suite.refresh(&tokens.refresh_token).await.expect_err("idle");
    assert_refused(&status, "SESSION_IDLE");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lifetime_is_configurable() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_with(&["--session-max-lifetime-secs", "2"]).await?;
    let mut tokens = signed_in(&suite, "short@example.com").await?;
    let ends: DateTime<Utc> = Utc::now() + chrono::Duration::seconds(2);

    let mut refreshes = 0;
    let status = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        match suite.refresh(&tokens.refresh_token).await {
            Ok(next) => {
                assert!(refresh_expiry(&next) <= ends.timestamp() + 1, "never past the lifetime");
                tokens = next;
                refreshes += 1;
            }
            Err(status) => break status,
        }
    };
    assert!(refreshes >= 2, "refreshed {refreshes} times before the end");
    assert_refused(&status, "SESSION_EXPIRED");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_idle_timeout_is_configurable() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite_with(&["--session-idle-timeout-secs", "1"]).await?;
    let tokens = signed_in(&suite, "nap@example.com").await?;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let status = suite.refresh(&tokens.refresh_token).await.expect_err("idle");
    assert_refused(&status, "SESSION_IDLE");
    suite.stop().await
}
