//! Events through NATS JetStream (`--nats-url`), against a real nats-server
//! with JetStream: auth's relay publishes UserRegistered, accounts' durable
//! consumer applies it once, a redelivery changes nothing, an event that
//! always fails is dead-lettered, and one trace runs from the caller into
//! accounts.
//!
//! The server is the one KEEL_TEST_NATS_SERVER names (`.ci/run` starts one):
//! these tests are ignored by a plain `cargo test` and run with
//! `cargo test -- --ignored nats`; run so without the variable, each says in
//! one line that it skipped.

use std::{collections::HashMap, time::Duration};

use anyhow::Context as _;
use diesel::{ExpressionMethods as _, QueryDsl as _};
use diesel_async::RunQueryDsl as _;
use keel::{
    auth::v1 as auth_pb,
    events::v1::{Event, UserRegistered, event::Payload},
};
use keel_accounts::schema::accounts;
use keel_platform::{
    config::{LogFormat, TelemetryConfig},
    events::{
        EventType,
        nats::async_nats::{HeaderMap, header::NATS_MESSAGE_ID, jetstream},
        outbox::{self, outbox as outbox_table},
        processed_events,
    },
    serve::telemetry,
};
use keel_testkit::{
    Suite, SuiteOptions, metrics::scrape, nats::NatsTest, otlp::TraceReceiver, spawn_suite_with_options,
};
use prost::Message as _;
use uuid::Uuid;

const PASSWORD: &str = "a perfectly fine password";

/// The test's part of the nats-server, or None (the test skips) without
/// one.
fn nats_for(test: &str) -> anyhow::Result<Option<NatsTest>> {
    keel_testkit::nats::server(test).map(NatsTest::new).transpose()
}

/// Polls `check` every 100 ms until it returns Some, for at most 30 s.
async fn eventually<T, F>(what: &str, mut check: impl FnMut() -> F) -> anyhow::Result<T>
where
    F: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = check().await? {
            return Ok(found);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "still waiting after 30 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Auth's UserRegistered rows: (id, marked done, payload kept).
async fn registrations(suite: &Suite) -> anyhow::Result<Vec<(Uuid, bool, bool)>> {
    let rows: Vec<(Uuid, Option<chrono::DateTime<chrono::Utc>>, Vec<u8>)> = outbox_table::table
        .filter(outbox_table::event_type.eq(EventType::UserRegistered.as_str()))
        .select((outbox_table::id, outbox_table::published_at, outbox_table::payload))
        .load(&mut suite.auth_db().await?)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, done, payload)| (id, done.is_some(), !payload.is_empty()))
        .collect())
}

/// The events stream of `nats`.
async fn events_stream(nats: &NatsTest) -> anyhow::Result<jetstream::stream::Stream> {
    let name = nats.broker.names().events_stream();
    Ok(nats.jetstream().await?.get_stream(&name).await?)
}

/// The last message on `subject` of `stream`, once there is one.
async fn last_on(
    stream: &jetstream::stream::Stream,
    subject: &str,
) -> anyhow::Result<jetstream::message::StreamMessage> {
    eventually(&format!("a message on {subject}"), || async {
        Ok(stream.get_last_raw_message_by_subject(subject).await.ok())
    })
    .await
}

/// The sum of the samples of `name` with `labels` that service `service`
/// serves.
async fn metric(suite: &Suite, service: &str, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
    Ok(scrape(&suite.metrics_url(service)?).await?.value(name, labels))
}

/// Accounts' rows for `user_id`.
async fn accounts_of(suite: &Suite, user_id: Uuid) -> anyhow::Result<i64> {
    Ok(accounts::table
        .filter(accounts::id.eq(user_id))
        .count()
        .get_result(&mut suite.accounts_db().await?)
        .await?)
}

/// Accounts' `processed_events` rows for `event_id`.
async fn processed(suite: &Suite, event_id: Uuid) -> anyhow::Result<i64> {
    Ok(processed_events::table
        .filter(processed_events::event_id.eq(event_id))
        .count()
        .get_result(&mut suite.accounts_db().await?)
        .await?)
}

/// Waits until accounts' consumer has nothing left to deliver or to have
/// acked.
async fn consumer_settled(nats: &NatsTest) -> anyhow::Result<()> {
    let stream = events_stream(nats).await?;
    let name = nats.broker.names().consumer("accounts");
    eventually("accounts' consumer to settle every message", || async {
        let info = stream.consumer_info(&name).await?;
        Ok((info.num_ack_pending == 0 && info.num_pending == 0).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs KEEL_TEST_NATS_SERVER (a nats-server with JetStream)"]
async fn nats_relay_publishes_an_event_once_and_marks_it_done_on_the_ack() -> anyhow::Result<()> {
    let Some(nats) = nats_for("nats_relay_publishes_an_event_once_and_marks_it_done_on_the_ack")? else {
        return Ok(());
    };
    // No consumer runs: what auth published stays in the stream as it was.
    let suite = spawn_suite_with_options(
        nats.suite_options(SuiteOptions::default().withhold("accounts").withhold("notifications")),
    )
    .await?;
    let user = suite.register("nats-relay@example.com", PASSWORD).await?;

    let rows = eventually("auth's UserRegistered to be marked done", || async {
        let rows = registrations(&suite).await?;
        Ok((!rows.is_empty() && rows.iter().all(|(_, done, _)| *done)).then_some(rows))
    })
    .await?;
    let [(event_id, _, payload_kept)] = rows.as_slice() else {
        anyhow::bail!("one UserRegistered expected: {rows:?}");
    };
    assert!(!payload_kept, "a published event's payload is cleared");

    let stream = events_stream(&nats).await?;
    let subject = nats.broker.names().event_subject(EventType::UserRegistered);
    assert_eq!(subject, format!("{}.events.user.registered", nats.prefix));
    let message = last_on(&stream, &subject).await?;
    assert_eq!(
        message.headers.get(NATS_MESSAGE_ID).map(|v| v.as_str()),
        Some(event_id.to_string().as_str()),
        "the event id is the message id"
    );
    // (Its `traceparent`, there once tracing is set up, is followed in
    // nats_carries_the_trace_from_the_caller_into_the_consumer.)
    let event = Event::decode(message.payload.clone())?;
    assert_eq!(event.id, event_id.to_string());
    assert_eq!(event.source, "auth");
    match &event.payload {
        Some(Payload::UserRegistered(registered)) => assert_eq!(registered.user_id, user.id),
        other => anyhow::bail!("not a UserRegistered: {other:?}"),
    }
    assert_eq!(
        metric(
            &suite,
            "auth",
            "keel_relay_deliveries_total",
            &[("subscriber", "nats"), ("outcome", "delivered")]
        )
        .await?,
        // UserRegistered and the verification mail's event.
        2.0
    );

    // The same event again (a relay whose lease ran out): the duplicate
    // window drops it.
    let before = stream.get_info().await?.state.messages;
    let again = nats.broker.publish_event(&event, &HashMap::new()).await?;
    assert!(again.duplicate, "published twice, stored once");
    assert_eq!(again.sequence, message.sequence);
    assert_eq!(stream.get_info().await?.state.messages, before);

    suite.stop().await?;
    nats.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs KEEL_TEST_NATS_SERVER (a nats-server with JetStream)"]
async fn nats_consumer_applies_an_event_once_and_a_redelivery_changes_nothing() -> anyhow::Result<()> {
    let Some(nats) = nats_for("nats_consumer_applies_an_event_once_and_a_redelivery_changes_nothing")? else {
        return Ok(());
    };
    let suite = spawn_suite_with_options(nats.suite_options(SuiteOptions::default())).await?;
    let user = suite.register("nats-consumer@example.com", PASSWORD).await?;
    let user_id = Uuid::parse_str(&user.id)?;

    eventually("accounts to open the account", || async {
        Ok((accounts_of(&suite, user_id).await? == 1).then_some(()))
    })
    .await?;
    let registered = registrations(&suite).await?;
    let (event_id, ..) = <[_]>::first(&registered).copied().context("no UserRegistered")?;
    assert_eq!(processed(&suite, event_id).await?, 1);
    consumer_settled(&nats).await?;
    let applied = [
        ("consumer", "accounts"),
        ("event_type", "user.registered"),
        ("outcome", "applied"),
    ];
    assert_eq!(
        metric(&suite, "accounts", "keel_events_received_total", &applied).await?,
        1.0
    );

    // The same event as a new message (a redelivery past the duplicate
    // window): accounts acks it as a duplicate and changes nothing.
    let stream = events_stream(&nats).await?;
    let subject = nats.broker.names().event_subject(EventType::UserRegistered);
    let message = last_on(&stream, &subject).await?;
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, format!("{event_id}-again"));
    let again = nats
        .jetstream()
        .await?
        .publish_with_headers(subject, headers, message.payload.clone())
        .await?
        .await?;
    assert!(!again.duplicate);
    let duplicate = [
        ("consumer", "accounts"),
        ("event_type", "user.registered"),
        ("outcome", "duplicate"),
    ];
    eventually("accounts to take the redelivery as a duplicate", || async {
        Ok((metric(&suite, "accounts", "keel_events_received_total", &duplicate).await? == 1.0).then_some(()))
    })
    .await?;
    consumer_settled(&nats).await?;
    assert_eq!(accounts_of(&suite, user_id).await?, 1);
    assert_eq!(processed(&suite, event_id).await?, 1);
    assert_eq!(
        metric(&suite, "accounts", "keel_events_received_total", &applied).await?,
        1.0
    );

    suite.stop().await?;
    nats.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs KEEL_TEST_NATS_SERVER (a nats-server with JetStream)"]
async fn nats_consumer_dead_letters_an_event_that_always_fails() -> anyhow::Result<()> {
    let Some(nats) = nats_for("nats_consumer_dead_letters_an_event_that_always_fails")? else {
        return Ok(());
    };
    let suite = spawn_suite_with_options(
        nats.suite_options(
            SuiteOptions::default()
                .args("accounts", &["--nats-max-deliver", "3"])
                .withhold("notifications"),
        ),
    )
    .await?;
    // A UserRegistered that accounts cannot apply (its user id is no id),
    // from auth's own outbox: the sink fails it at every delivery.
    let mut auth = suite.auth_db().await?;
    let broken = outbox::enqueue(
        &mut auth,
        "auth",
        Payload::UserRegistered(UserRegistered {
            user_id: "not-a-uuid".into(),
            email: "broken@example.com".into(),
        }),
    )
    .await?;

    let dead_letters = nats
        .jetstream()
        .await?
        .get_stream(nats.broker.names().dead_letters_stream())
        .await?;
    let dead_subject = nats.broker.names().dead_letter_subject("accounts", "user.registered");
    assert_eq!(dead_subject, format!("{}.dead.accounts.user.registered", nats.prefix));
    let dead = last_on(&dead_letters, &dead_subject).await?;
    let header = |name: &str| dead.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header("Keel-Consumer").as_deref(), Some("accounts"));
    assert_eq!(
        header("Keel-Deliveries").as_deref(),
        Some("3"),
        "after max_deliver deliveries"
    );
    let reason = header("Keel-Reason").unwrap_or_default();
    assert!(reason.contains("InvalidArgument"), "{reason}");
    assert_eq!(Event::decode(dead.payload.clone())?.id, broken.to_string());

    let labels = [("consumer", "accounts"), ("event_type", "user.registered")];
    assert_eq!(
        metric(&suite, "accounts", "keel_events_dead_lettered_total", &labels).await?,
        1.0
    );
    let retried = [
        ("consumer", "accounts"),
        ("event_type", "user.registered"),
        ("outcome", "retried"),
    ];
    assert_eq!(
        metric(&suite, "accounts", "keel_events_received_total", &retried).await?,
        2.0
    );
    assert_eq!(processed(&suite, broken).await?, 0, "nothing of it was applied");

    // Bytes that are no event: refused at the first delivery, not retried.
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, "not-an-event");
    nats.jetstream()
        .await?
        .publish_with_headers(
            nats.broker.names().event_subject(EventType::UserRegistered),
            headers,
            "not an event".into(),
        )
        .await?
        .await?;
    eventually("the undecodable message to be dead-lettered", || async {
        let dead = dead_letters.get_last_raw_message_by_subject(&dead_subject).await.ok();
        Ok(dead.filter(|dead| dead.payload.as_ref() == b"not an event"))
    })
    .await
    .and_then(|dead| {
        anyhow::ensure!(dead.headers.get("Keel-Deliveries").map(|v| v.as_str()) == Some("1"));
        Ok(())
    })?;
    consumer_settled(&nats).await?;
    assert_eq!(
        metric(&suite, "accounts", "keel_events_dead_lettered_total", &labels).await?,
        2.0
    );

    // The consumer goes on: the next registration is applied.
    let user = suite.register("after-the-dead-letter@example.com", PASSWORD).await?;
    let user_id = Uuid::parse_str(&user.id)?;
    eventually("accounts to open the next account", || async {
        Ok((accounts_of(&suite, user_id).await? == 1).then_some(()))
    })
    .await?;

    suite.stop().await?;
    nats.cleanup().await
}

/// OTLP span kinds.
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs KEEL_TEST_NATS_SERVER (a nats-server with JetStream)"]
async fn nats_carries_the_trace_from_the_caller_into_the_consumer() -> anyhow::Result<()> {
    let Some(nats) = nats_for("nats_carries_the_trace_from_the_caller_into_the_consumer")? else {
        return Ok(());
    };
    // The subscriber is process-wide: no other test of this binary
    // installs one.
    let receiver = TraceReceiver::start().await?;
    let guard = telemetry::init(
        "keel",
        &TelemetryConfig {
            log_format: LogFormat::Pretty,
            log_filter: "warn,keel_platform::events=info,keel_platform::serve::telemetry=info".into(),
            otlp_endpoint: Some(receiver.endpoint()),
        },
    )?;
    let suite = spawn_suite_with_options(nats.suite_options(SuiteOptions::default())).await?;

    let trace_id = Uuid::now_v7().simple().to_string();
    let caller_span = Uuid::now_v7().simple().to_string()[16..].to_owned();
    let mut request = tonic::Request::new(auth_pb::RegisterRequest {
        request_id: Uuid::now_v7().to_string(),
        email: "nats-traced@example.com".into(),
        password: PASSWORD.into(),
    });
    request
        .metadata_mut()
        .insert("traceparent", format!("00-{trace_id}-{caller_span}-01").parse()?);
    suite.auth().register(request).await?;

    let is = |s: &keel_testkit::otlp::ReceivedSpan, name: &str, service: &str| {
        s.name == name
            && s.attribute("keel.service") == Some(service)
            && s.attribute("event.type") == Some("user.registered")
    };
    let spans = eventually("accounts' event.consume in the caller's trace", || async {
        tokio::task::block_in_place(|| guard.flush())?;
        let spans = receiver.trace(&trace_id);
        Ok(spans
            .iter()
            .any(|s| is(s, "event.consume", "accounts"))
            .then_some(spans))
    })
    .await?;
    let one = |name: &str, service: &str| {
        let found: Vec<_> = spans.iter().filter(|s| is(s, name, service)).collect();
        match found.as_slice() {
            [span] => Ok(*span),
            _ => Err(anyhow::anyhow!("{} {name} spans of {service}: {spans:#?}", found.len())),
        }
    };
    let enqueue = one("outbox.enqueue", "auth")?;
    let relay = one("outbox.relay", "auth")?;
    assert_eq!(relay.kind, PRODUCER);
    assert_eq!(relay.attribute("messaging.system"), Some("nats"));
    assert_eq!(relay.parent_span_id.as_deref(), Some(enqueue.span_id.as_str()));
    let receive = one("event.receive", "accounts")?;
    assert_eq!(receive.kind, CONSUMER);
    assert_eq!(
        receive.parent_span_id.as_deref(),
        Some(relay.span_id.as_str()),
        "the consumer continues the relay's span from the message headers"
    );
    let consume = one("event.consume", "accounts")?;
    assert_eq!(consume.parent_span_id.as_deref(), Some(receive.span_id.as_str()));
    assert_eq!(
        consume.links,
        vec![(trace_id.clone(), enqueue.span_id.clone())],
        "the consumer links to the producer's span"
    );

    suite.stop().await?;
    nats.cleanup().await
}
