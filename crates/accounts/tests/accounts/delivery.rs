//! Events from auth reach accounts: at least once, applied exactly once, and
//! not sent again once accepted while another subscriber still fails.

use std::{sync::Arc, time::Duration};

use diesel::{ExpressionMethods as _, QueryDsl as _};
use diesel_async::{AsyncConnection as _, RunQueryDsl as _};
use futures::future::join_all;
use keel::events::v1::{UserRegistered, event::Payload};
use keel_accounts::schema::accounts;
use keel_platform::{
    auth::service_token::{TokenFuture, TokenProvider},
    client::ServiceChannel,
    events::EventType,
    events::outbox,
    events::relay::{Relay, RelayConfig, Subscriber},
    serve::metrics::{Format, Metrics},
};
use keel_testkit::{Suite, SuiteOptions, TestDatabase, spawn_suite_with_options};
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

/// How many deliveries to `subscriber` the relay publishing on `metrics`
/// counted with `outcome`.
fn deliveries(metrics: &Metrics, subscriber: &str, outcome: &str) -> anyhow::Result<f64> {
    let text = metrics.encode(Format::Prometheus)?;
    let (subscriber, outcome) = (format!("subscriber=\"{subscriber}\""), format!("outcome=\"{outcome}\""));
    Ok(text
        .lines()
        .filter(|line| line.starts_with("keel_relay_deliveries_total{"))
        .filter(|line| line.contains(&subscriber) && line.contains(&outcome))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

/// A relay over `outbox_url` sending UserRegistered to accounts and to
/// `notifications` (a channel to it, or to nowhere).
fn relay_to(
    suite: &Suite,
    outbox_url: &str,
    token: &str,
    notifications: tonic::transport::Channel,
    metrics: &Metrics,
) -> anyhow::Result<Relay> {
    let tokens: Arc<dyn TokenProvider> = Arc::new(TestClientTokens(token.to_owned()));
    let subscriber = |name, channel| Subscriber {
        name,
        channel: ServiceChannel::new(channel, tokens.clone()),
        event_types: vec![EventType::UserRegistered],
    };
    Ok(Relay::new(
        outbox_url.to_owned(),
        keel_platform::db::pool(outbox_url, &Default::default())?,
        vec![
            subscriber("accounts", suite.accounts_channel()),
            subscriber("notifications", notifications),
        ],
        RelayConfig::default(),
        metrics,
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_accepted_an_event_is_not_sent_it_again_while_another_fails() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let token = suite.auth_relay_token().await?;
    // An outbox of auth's events of its own, which only the relays below read.
    let outbox_db = TestDatabase::create(keel_testkit::suite::schema(&keel_accounts::SERVICE)).await?;
    let user_id = uuid::Uuid::now_v7();
    let registered = Payload::UserRegistered(UserRegistered {
        user_id: user_id.to_string(),
        email: "twice-over@example.com".into(),
    });
    let mut conn = diesel_async::AsyncPgConnection::establish(outbox_db.url()).await?;
    let event_id = outbox::enqueue(&mut conn, "auth", registered).await?;

    // Notifications cannot be reached: accounts applies the event, and is
    // remembered as having accepted it.
    let nowhere = {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
        tonic::transport::Channel::from_shared(format!("http://{closed}"))?.connect_lazy()
    };
    let failing = Metrics::new("auth");
    let relay = relay_to(&suite, outbox_db.url(), &token, nowhere, &failing)?;
    for _ in 0..2 {
        assert_eq!(relay.deliver_batch(&CancellationToken::new()).await?, 1);
        diesel::update(outbox::outbox::table.find(event_id))
            .set(outbox::outbox::next_attempt_at.eq(diesel::dsl::now))
            .execute(&mut conn)
            .await?;
    }
    assert_eq!(
        deliveries(&failing, "accounts", "delivered")?,
        1.0,
        "sent to accounts once"
    );
    assert_eq!(deliveries(&failing, "notifications", "failed")?, 2.0);
    let (published, delivered_to, last_error): (
        Option<chrono::DateTime<chrono::Utc>>,
        Option<Vec<String>>,
        Option<String>,
    ) = outbox::outbox::table
        .find(event_id)
        .select((
            outbox::outbox::published_at,
            outbox::outbox::delivered_to,
            outbox::outbox::last_error,
        ))
        .get_result(&mut conn)
        .await?;
    assert_eq!(published, None, "not done while notifications has not accepted it");
    assert_eq!(delivered_to, Some(vec!["accounts".to_owned()]));
    assert!(last_error.unwrap_or_default().contains("notifications"));
    assert_eq!(wait_for_accounts(&suite, 1).await?, 1);

    // Notifications is back: it alone is sent the event, which is then done.
    let recovered = Metrics::new("auth");
    let relay = relay_to(
        &suite,
        outbox_db.url(),
        &token,
        suite.channel("notifications"),
        &recovered,
    )?;
    assert_eq!(relay.deliver_batch(&CancellationToken::new()).await?, 1);
    assert_eq!(deliveries(&recovered, "accounts", "delivered")?, 0.0);
    assert_eq!(deliveries(&recovered, "notifications", "delivered")?, 1.0);
    let (published, delivered_to, payload): (Option<chrono::DateTime<chrono::Utc>>, Option<Vec<String>>, Vec<u8>) =
        outbox::outbox::table
            .find(event_id)
            .select((
                outbox::outbox::published_at,
                outbox::outbox::delivered_to,
                outbox::outbox::payload,
            ))
            .get_result(&mut conn)
            .await?;
    assert!(published.is_some());
    assert_eq!(
        delivered_to,
        Some(vec!["accounts".to_owned(), "notifications".to_owned()])
    );
    assert!(payload.is_empty(), "a delivered event's payload is cleared");
    suite.stop().await
}
