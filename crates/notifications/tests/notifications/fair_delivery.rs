//! Fair deliveries: endpoints that accept connections and never answer
//! delay their own deliveries and no one else's. Another user's mail reaches
//! the SMTP server and their webhook a live receiver within [`BOUND`] of
//! their event, while the silent endpoints are retried on schedule, each
//! within its limit of deliveries in flight (across replicas too) and, once
//! failing, within the lane's share for failing endpoints. The delivery
//! metrics count per endpoint and show the backlog's age.

use crate::{common, silent::Silent};

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use common::{Fixture, User, eventually, fixture_with};
use keel::notifications::v1 as pb;
use keel_testkit::{authorized, webhook_receiver::WebhookReceiver};

/// How soon after an event its mail and webhook must arrive, whatever the
/// silent endpoints hold. Each test's webhook timeout is well above it, so
/// a delivery that waited behind a silent endpoint's attempt would miss it;
/// the rest is room for a loaded machine (unhindered, it takes a few tens of
/// milliseconds).
const BOUND: Duration = Duration::from_secs(2);

/// Registers an endpoint of `user`'s for balance.changed; returns its id.
async fn add_endpoint(f: &Fixture, user: &User, url: &str) -> anyhow::Result<String> {
    let created = f
        .notifications()
        .create_webhook_endpoint(authorized(
            pb::CreateWebhookEndpointRequest {
                webhook_endpoint: Some(pb::WebhookEndpoint {
                    url: url.into(),
                    event_types: vec!["balance.changed".into()],
                    description: "fair delivery tests".into(),
                    ..Default::default()
                }),
            },
            &user.token,
        ))
        .await?
        .into_inner();
    Ok(created.webhook_endpoint.unwrap_or_default().id)
}

/// The user's balance mails received so far.
fn balance_mails(f: &Fixture, user: &User) -> usize {
    f.smtp
        .messages()
        .iter()
        .filter(|m| m.to.contains(&user.email))
        .filter(|m| {
            m.header("Subject")
                .is_some_and(|s| s.to_lowercase().contains("balance"))
        })
        .count()
}

/// Deposits for `user` and measures how long their `nth` webhook (on
/// `receiver`) and `nth` balance mail take to arrive after the deposit.
async fn deposit_and_time(
    f: &Fixture,
    user: &User,
    receiver: &WebhookReceiver,
    nth: usize,
) -> anyhow::Result<(Duration, Duration)> {
    f.deposit(user, 300).await?;
    let event = Instant::now();
    let (mut webhook, mut mail) = (None, None);
    while webhook.is_none() || mail.is_none() {
        if webhook.is_none() && receiver.received().len() >= nth {
            webhook = Some(event.elapsed());
        }
        if mail.is_none() && balance_mails(f, user) >= nth {
            mail = Some(event.elapsed());
        }
        anyhow::ensure!(
            event.elapsed() < common::PATIENCE,
            "webhook after {webhook:?}, mail after {mail:?}: not both arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((webhook.unwrap_or_default(), mail.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_endpoints_delay_no_one_else_and_are_retried_on_schedule() -> anyhow::Result<()> {
    let f = fixture_with(&[
        "--webhook-timeout-ms",
        "5000",
        "--delivery-lease-ms",
        "20000",
        // The first retry 1 s (±10 %) after a failure, the next a minute on.
        "--webhook-retry-scale",
        "0.2",
        "--webhook-endpoint-concurrency",
        "2",
        // Room for all of the slow user's retries at once, so that each is
        // on schedule (the share itself is the next test's).
        "--webhook-failing-concurrency",
        "64",
    ])
    .await?;
    // As many silent endpoints as a user may have.
    let silent = Silent::start(20).await?;
    let slow = f.user().await?;
    for endpoint in 0..20 {
        add_endpoint(&f, &slow, &silent.url(endpoint)).await?;
    }
    let receiver = WebhookReceiver::start().await?;
    let other = f.user().await?;
    add_endpoint(&f, &other, &receiver.url("/hooks")).await?;
    f.mail_to(&other.email, 2).await?;

    // Two events of the slow user's: 40 attempts, each holding a worker
    // until the timeout.
    f.deposit(&slow, 100).await?;
    f.deposit(&slow, 200).await?;
    eventually("two attempts hanging at each silent endpoint", || async {
        Ok((0..20).all(|endpoint| silent.open(endpoint) == 2).then_some(()))
    })
    .await?;

    let (webhook, mail) = deposit_and_time(&f, &other, &receiver, 1).await?;
    assert!(webhook <= BOUND, "the other user's webhook took {webhook:?}");
    assert!(mail <= BOUND, "the other user's mail took {mail:?}");

    // Each silent delivery was tried again on schedule: once its attempt
    // timed out (5 s), after the first retry delay (1 s ± 10 %).
    let requests = eventually("each silent delivery attempted twice", || async {
        let requests = silent.requests();
        Ok((requests.len() >= 80).then_some(requests))
    })
    .await?;
    let mut attempts: BTreeMap<(usize, String), Vec<Instant>> = BTreeMap::new();
    for request in requests {
        attempts
            .entry((request.endpoint, request.webhook_id))
            .or_default()
            .push(request.at);
    }
    assert_eq!(attempts.len(), 40, "two deliveries per silent endpoint");
    for ((endpoint, id), at) in &attempts {
        assert_eq!(at.len(), 2, "{endpoint}/{id}: attempted {} times", at.len());
        let gap = at[1].duration_since(at[0]);
        // Not before it was due (a little under, for where each end reads
        // its clock); late by at most a claim on a loaded machine.
        assert!(
            gap >= Duration::from_millis(5_800) && gap <= Duration::from_millis(8_100),
            "{endpoint}/{id}: the retry came {gap:?} after the first attempt"
        );
    }
    for endpoint in 0..20 {
        assert!(
            silent.most_open(endpoint) <= 2,
            "endpoint {endpoint} went over its limit"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_endpoints_share_only_their_part_of_the_workers() -> anyhow::Result<()> {
    use diesel::{ExpressionMethods as _, QueryDsl as _};
    use diesel_async::RunQueryDsl as _;
    use keel_notifications::schema::webhook_endpoints;

    let f = fixture_with(&[
        "--webhook-timeout-ms",
        "4000",
        "--delivery-lease-ms",
        "20000",
        "--webhook-concurrency",
        "8",
        "--webhook-failing-concurrency",
        "2",
        "--webhook-endpoint-concurrency",
        "1",
    ])
    .await?;
    // More silent endpoints than there are webhook workers.
    let silent = Silent::start(10).await?;
    let slow = f.user().await?;
    let mut silent_ids = Vec::new();
    for endpoint in 0..10 {
        silent_ids.push(add_endpoint(&f, &slow, &silent.url(endpoint)).await?);
    }
    let receiver = WebhookReceiver::start().await?;
    let other = f.user().await?;
    let other_endpoint = add_endpoint(&f, &other, &receiver.url("/hooks")).await?;
    f.mail_to(&other.email, 2).await?;

    f.deposit(&slow, 100).await?;
    // Until an attempt fails an endpoint is not known to be failing; once
    // all ten are, they keep only their part of the workers.
    let slow_id = uuid::Uuid::parse_str(&slow.id)?;
    let mut conn = f.suite.db("notifications").await?;
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        let failing: i64 = webhook_endpoints::table
            .filter(webhook_endpoints::user_id.eq(slow_id))
            .filter(webhook_endpoints::failing_since.is_not_null())
            .count()
            .get_result(&mut conn)
            .await?;
        if failing == 10 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{failing} of 10 silent endpoints failing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    silent.reset_most_open_in_all();
    let attempts_before = silent.requests().len();

    for nth in 1..=3 {
        let (webhook, mail) = deposit_and_time(&f, &other, &receiver, nth).await?;
        assert!(
            webhook <= BOUND,
            "event {nth}: the other user's webhook took {webhook:?}"
        );
        assert!(mail <= BOUND, "event {nth}: the other user's mail took {mail:?}");
    }
    // They are still tried, two at a time.
    eventually("more attempts at the failing endpoints", || async {
        Ok((silent.requests().len() >= attempts_before + 4).then_some(()))
    })
    .await?;
    assert!(
        silent.most_open_in_all() <= 2,
        "failing endpoints held {} workers at once",
        silent.most_open_in_all()
    );

    // Counted per endpoint; the failing ones' retries wait, and the oldest
    // due delivery's age shows it (measured every 5 s).
    let url = f.suite.metrics_url("notifications")?;
    let series = "keel_notification_webhook_deliveries_total";
    let scrape = eventually("the failing endpoints' backlog in the metrics", || async {
        let scrape = keel_testkit::metrics::scrape(&url).await?;
        let age = scrape.value("keel_notification_oldest_due_age_seconds", &[("channel", "webhook")]);
        Ok((age >= 1.0).then_some(scrape))
    })
    .await?;
    assert_eq!(
        scrape.value(series, &[("endpoint", &other_endpoint), ("outcome", "delivered")]),
        3.0
    );
    let retried: f64 = silent_ids
        .iter()
        .map(|id| scrape.value(series, &[("endpoint", id), ("outcome", "retried")]))
        .sum();
    assert!(retried >= 10.0, "{retried} retries counted for the silent endpoints");
    assert_eq!(
        scrape.value(
            "keel_notification_deliveries_total",
            &[("channel", "webhook"), ("outcome", "delivered")]
        ),
        3.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_never_has_more_than_its_limit_in_flight_even_across_replicas() -> anyhow::Result<()> {
    let f = fixture_with(&[
        "--webhook-timeout-ms",
        "2000",
        "--delivery-lease-ms",
        "20000",
        "--webhook-endpoint-concurrency",
        "2",
    ])
    .await?;
    let _replica = f.suite.spawn_replica("notifications").await?;
    let silent = Silent::start(1).await?;
    let user = f.user().await?;
    add_endpoint(&f, &user, &silent.url(0)).await?;
    for amount in 1..=6 {
        f.deposit(&user, amount * 100).await?;
    }
    // Six deliveries, two at a time, whichever replica claims them.
    eventually("the silent endpoint's queue worked through", || async {
        Ok((silent.requests().len() >= 8).then_some(()))
    })
    .await?;
    assert_eq!(silent.most_open(0), 2, "two in flight at once, never more");
    Ok(())
}
