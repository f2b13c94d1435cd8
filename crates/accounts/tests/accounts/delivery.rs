//! Events from auth reach accounts: at least once, applied exactly once.

use std::{sync::Arc, time::Duration};

use diesel::{ExpressionMethods as _, QueryDsl as _};
use diesel_async::RunQueryDsl as _;
use futures::future::join_all;
use keel_accounts::schema::accounts;
use keel_platform::{
    auth::service_token::{TokenFuture, TokenProvider},
    client::ServiceChannel,
    events::relay::{Relay, RelayConfig, Subscriber},
};
use keel_testkit::{Suite, SuiteOptions, spawn_suite_with_options};
use tokio_util::sync::CancellationToken;

/// Waits until accounts holds `expected` accounts (or gives up after 30 s).
async fn wait_for_accounts(suite: &Suite, expected: i64) -> anyhow::Result<i64> {
    let mut conn = suite.accounts_db().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let count: i64 = accounts::table.count().get_result(&mut conn).await?;
        if count >= expected || tokio::time::Instant::now() > deadline {
            return Ok(count);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn register_many(suite: &Suite, prefix: &str, count: usize) -> anyhow::Result<Vec<String>> {
    let registrations = join_all(
        (0..count).map(|i| suite.register_as(format!("{prefix}-{i}@example.com"), "a perfectly fine password")),
    )
    .await;
    registrations.into_iter().map(|r| r.map(|u| u.id)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn users_registered_while_accounts_is_down_all_arrive_once() -> anyhow::Result<()> {
    let mut suite = spawn_suite_with_options(SuiteOptions::default().withhold("accounts")).await?;
    let ids = register_many(&suite, "offline", 50).await?;
    // Nothing can arrive while accounts is down.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(wait_for_accounts(&suite, 0).await?, 0);

    suite.start_accounts().await?;
    assert_eq!(wait_for_accounts(&suite, 50).await?, 50);

    let mut conn = suite.accounts_db().await?;
    for id in &ids {
        let id = uuid::Uuid::parse_str(id)?;
        let emails: Vec<String> = accounts::table
            .filter(accounts::id.eq(id))
            .select(accounts::email)
            .load(&mut conn)
            .await?;
        assert_eq!(emails.len(), 1, "account {id} exists exactly once");
        assert!(emails[0].starts_with("offline-"), "the event carried the email");
    }
    suite.stop().await
}

/// Tokens for an extra relay, from the suite's test client.
#[derive(Debug)]
struct TestClientTokens(String);

impl TokenProvider for TestClientTokens {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_relays_at_once_apply_each_event_once() -> anyhow::Result<()> {
    let mut suite = spawn_suite_with_options(SuiteOptions::default().withhold("accounts")).await?;
    register_many(&suite, "twice", 40).await?;

    // A second relay over auth's outbox, besides the one inside auth.
    let token = suite.auth_relay_token().await?;
    let pool = keel_platform::db::pool(suite.auth_database_url(), &Default::default())?;
    let relay = Relay::new(
        suite.auth_database_url().to_owned(),
        pool,
        vec![Subscriber {
            name: "accounts",
            channel: ServiceChannel::new(suite.accounts_channel(), Arc::new(TestClientTokens(token))),
            event_types: keel_accounts::SERVICE.consumes.to_vec(),
        }],
        RelayConfig {
            relay_poll_ms: 50,
            relay_max_backoff_ms: 200,
            relay_batch: 4,
            ..RelayConfig::default()
        },
        &keel_platform::serve::metrics::Metrics::new("auth"),
    );
    let stop = CancellationToken::new();
    let second = tokio::spawn(relay.run(stop.clone()));

    suite.start_accounts().await?;
    assert_eq!(wait_for_accounts(&suite, 40).await?, 40);
    stop.cancel();
    second.await?;

    // Every UserRegistered event was applied once, and recorded once.
    let mut conn = suite.accounts_db().await?;
    let processed: i64 = keel_platform::events::processed_events::table
        .count()
        .get_result(&mut conn)
        .await?;
    assert_eq!(processed, 40);
    let mut auth = suite.auth_db().await?;
    let pending: i64 = keel_platform::events::outbox::outbox::table
        .filter(keel_platform::events::outbox::outbox::published_at.is_null())
        .filter(keel_platform::events::outbox::outbox::event_type.eq("user.registered"))
        .count()
        .get_result(&mut auth)
        .await?;
    assert_eq!(pending, 0, "every event is marked delivered");
    suite.stop().await
}
