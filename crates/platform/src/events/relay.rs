//! The outbox relay: delivers a service's committed events to every
//! subscriber's `keel.events.v1.EventSink/Deliver`, at least once.
//!
//! It wakes on the outbox's NOTIFY and polls as a fallback. Rows are claimed
//! with `FOR UPDATE SKIP LOCKED` and leased for the time of their delivery,
//! so several relays (replicas) can run at once without two of them sending
//! the same row at the same time, and no transaction stays open while
//! subscribers are called. A failed delivery is retried with exponential
//! backoff and jitter; other events do not wait for it, and the subscribers
//! that accepted it are recorded and not sent it again. A relay that dies
//! mid-batch leaves its leased rows to be sent again when the lease ends.
//! Events that no subscriber wants are marked done at once; every done event
//! is deleted after the retention period, and an event carrying a secret
//! when the secret expires.
//!
//! With NATS configured ([`Relay::through_nats`]), delivering an event is
//! one publish to JetStream instead, and the event is done once JetStream
//! has stored it: the broker fans out to the consumers
//! ([`crate::events::nats`]).

use std::{
    fmt,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Args;
use diesel::{AsChangeset, BoolExpressionMethods as _, ExpressionMethods as _, QueryDsl as _};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use keel::events::v1::{DeliverRequest, Event, event_sink_client::EventSinkClient};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use prost::Message as _;
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::{
    client::ServiceChannel,
    db::Pool,
    events::EventType,
    events::nats::Broker,
    events::outbox::{NOTIFY_CHANNEL, outbox as table},
    events::retention,
    serve::metrics::Metrics,
};

/// How events travel: how the relay paces itself, and how long producers
/// and consumers keep their records of them. Every service takes these.
#[derive(Debug, Clone, Args)]
pub struct RelayConfig {
    /// How often the relay looks for events when no NOTIFY wakes it (ms).
    #[arg(long, env = "KEEL_RELAY_POLL_MS", default_value_t = 1_000)]
    pub relay_poll_ms: u64,

    /// The longest wait before retrying a failed delivery (ms); waits double
    /// from 100 ms up to it, with jitter.
    #[arg(long, env = "KEEL_RELAY_MAX_BACKOFF_MS", default_value_t = 60_000)]
    pub relay_max_backoff_ms: u64,

    /// Events claimed per pass.
    #[arg(long, env = "KEEL_RELAY_BATCH", default_value_t = 64, value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub relay_batch: i64,

    /// How long a delivered (or unwanted) event stays in the outbox before it
    /// is deleted (seconds), so no outbox grows without bound.
    #[arg(long, env = "KEEL_OUTBOX_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub outbox_retention_secs: u64,

    /// How long a consumer remembers an event it applied (seconds), so a
    /// redelivery is a duplicate; its sink refuses events older than this
    /// less an hour (FAILED_PRECONDITION `EVENT_TOO_OLD`) rather than risk
    /// applying one twice. At least an hour longer than the outbox retention
    /// and the relay's longest backoff.
    #[arg(long, env = "KEEL_PROCESSED_EVENTS_RETENTION_SECS", default_value_t = 30 * 24 * 3600)]
    pub processed_events_retention_secs: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            relay_poll_ms: 1_000,
            relay_max_backoff_ms: 60_000,
            relay_batch: 64,
            outbox_retention_secs: 7 * 24 * 3600,
            processed_events_retention_secs: retention::DEFAULT_PROCESSED_EVENTS_RETENTION.as_secs(),
        }
    }
}

impl RelayConfig {
    /// How long consumers keep their `processed_events` rows.
    pub fn processed_events_retention(&self) -> Duration {
        Duration::from_secs(self.processed_events_retention_secs)
    }

    /// The oldest event a consumer accepts ([`retention::event_horizon`]).
    pub fn event_horizon(&self) -> Duration {
        retention::event_horizon(self.processed_events_retention())
    }

    /// An error unless consumers remember events clearly longer than the
    /// relay waits between two attempts (else an event that fails once might
    /// be refused as too old at its retry) and than producers keep them in
    /// their outbox (so an event its producer still has on record is one its
    /// consumers still remember).
    pub fn check(&self) -> anyhow::Result<()> {
        let floor = Duration::from_secs(self.outbox_retention_secs)
            .max(Duration::from_millis(self.relay_max_backoff_ms))
            .saturating_add(retention::CLOCK_SKEW_MARGIN);
        anyhow::ensure!(
            self.processed_events_retention() >= floor,
            "KEEL_PROCESSED_EVENTS_RETENTION_SECS ({}) must be at least {} seconds: an hour longer than both \
             KEEL_OUTBOX_RETENTION_SECS ({}) and KEEL_RELAY_MAX_BACKOFF_MS ({} ms)",
            self.processed_events_retention_secs,
            floor.as_secs(),
            self.outbox_retention_secs,
            self.relay_max_backoff_ms
        );
        Ok(())
    }
}

/// A service that receives events.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// Its name, for logs.
    pub name: &'static str,
    /// Where its EventSink listens, with the producer's service token.
    pub channel: ServiceChannel,
    /// The event types it wants; others are not sent to it, so secrets in
    /// events reach only who needs them.
    pub event_types: Vec<EventType>,
}

/// Delivers one service's outbox.
#[derive(Clone)]
pub struct Relay {
    database_url: String,
    pool: Pool,
    subscribers: Vec<Subscriber>,
    /// Where events go instead of to the subscribers, when set.
    nats: Option<Broker>,
    config: RelayConfig,
    metrics: RelayMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProducerLabels {
    producer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    producer: &'static str,
    subscriber: &'static str,
    outcome: &'static str,
}

/// What the relay publishes: how far behind it is, and how its deliveries
/// went.
#[derive(Clone, Debug)]
struct RelayMetrics {
    producer: &'static str,
    depth: Family<ProducerLabels, Gauge>,
    oldest_age: Family<ProducerLabels, Gauge<f64, AtomicU64>>,
    deliveries: Family<DeliveryLabels, Counter>,
}

impl RelayMetrics {
    fn new(metrics: &Metrics) -> Self {
        let relay = Self {
            producer: metrics.component(),
            depth: Family::default(),
            oldest_age: Family::default(),
            deliveries: Family::default(),
        };
        metrics.register(
            "outbox_depth",
            "Events in the outbox not yet delivered to every subscriber.",
            relay.depth.clone(),
        );
        metrics.register(
            "outbox_oldest_age_seconds",
            "How long the oldest undelivered event has waited: the relay's lag.",
            relay.oldest_age.clone(),
        );
        metrics.register(
            "relay_deliveries",
            "Deliveries of outbox events to subscribers, by outcome (delivered, failed).",
            relay.deliveries.clone(),
        );
        relay
    }

    fn delivered(&self, subscriber: &'static str, outcome: &'static str) {
        let labels = DeliveryLabels {
            producer: self.producer,
            subscriber,
            outcome,
        };
        self.deliveries.get_or_create(&labels).inc();
    }

    fn backlog(&self, depth: i64, oldest_age: Duration) {
        let labels = ProducerLabels {
            producer: self.producer,
        };
        self.depth.get_or_create(&labels).set(depth);
        self.oldest_age.get_or_create(&labels).set(oldest_age.as_secs_f64());
    }
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("subscribers", &self.subscribers)
            .field("nats", &self.nats)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Each delivery attempt waits at most this long.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long claimed events stay reserved for the relay that claimed them:
/// room for a whole batch of slow deliveries.
pub(crate) const LEASE: Duration = Duration::from_secs(300);
/// The `subscriber` label of publishes to NATS in the relay's metrics.
const NATS_SUBSCRIBER: &str = "nats";
/// How often the outbox's backlog is measured for the metrics, at most.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);
/// How often old events are deleted, at most (a shorter retention period
/// prunes as often as it lasts).
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// An event's last delivery error cleared, as it is marked done.
#[derive(AsChangeset)]
// None must write NULL here, not leave the column as it is.
#[diesel(table_name = table, treat_none_as_null = true)]
struct ErrorClear {
    last_error: Option<String>,
}

/// A delivered event's payload dropped (it may carry secrets) and its last error cleared.
#[derive(AsChangeset)]
// None must write NULL here, not leave the column as it is.
#[diesel(table_name = table, treat_none_as_null = true)]
struct PayloadScrub {
    payload: Vec<u8>,
    last_error: Option<String>,
}

/// A failed delivery recorded, and the event's next attempt scheduled.
#[derive(AsChangeset)]
#[diesel(table_name = table)]
struct RetrySchedule {
    attempts: i32,
    next_attempt_at: DateTime<Utc>,
    last_error: String,
}

impl Relay {
    /// A relay over the outbox in the database at `database_url`, whose
    /// backlog and deliveries are published on `metrics`.
    pub fn new(
        database_url: String,
        pool: Pool,
        subscribers: Vec<Subscriber>,
        config: RelayConfig,
        metrics: &Metrics,
    ) -> Self {
        Self {
            database_url,
            pool,
            subscribers,
            nats: None,
            config,
            metrics: RelayMetrics::new(metrics),
        }
    }

    /// The same relay publishing every event to NATS JetStream through
    /// `broker` instead of calling subscribers (it then needs none).
    pub fn through_nats(self, broker: Broker) -> Self {
        Self {
            nats: Some(broker),
            ..self
        }
    }

    /// Delivers until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(crate::db::listen(
            self.database_url.clone(),
            NOTIFY_CHANNEL,
            wake.clone(),
            shutdown.clone(),
        ));
        let poll = Duration::from_millis(self.config.relay_poll_ms);
        let prune_every =
            Duration::from_secs(self.config.outbox_retention_secs).clamp(Duration::from_secs(1), PRUNE_INTERVAL);
        let mut next_prune = Instant::now();
        // Measured beside the deliveries, not between batches: a batch of
        // slow deliveries is exactly when the lag must not freeze.
        let backlog = tokio::spawn(self.clone().measure_backlog(shutdown.clone()));
        loop {
            if Instant::now() >= next_prune {
                next_prune = Instant::now() + prune_every;
                if let Err(err) = self.prune().await {
                    tracing::warn!(error = format!("{err:#}"), "deleting old outbox events failed");
                }
            }
            let claimed = match self.deliver_batch(&shutdown).await {
                Ok(claimed) => claimed,
                Err(err) => {
                    tracing::warn!(error = format!("{err:#}"), "outbox relay pass failed");
                    0
                }
            };
            if shutdown.is_cancelled() {
                break;
            }
            // A full batch means more may be waiting: go again at once.
            if claimed < self.config.relay_batch as usize {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(poll) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        }
        listener.abort();
        backlog.abort();
    }

    /// Claims a batch of due events, delivers each, and records the outcome.
    /// Returns how many were claimed.
    ///
    /// Claiming is a short transaction that leases the rows (pushes their
    /// `next_attempt_at` past the delivery time), so no transaction or row
    /// lock is held while subscribers are called, and another relay skips
    /// them until the lease runs out. Each outcome is one statement, so a
    /// crash leaves an event either as it was claimed (sent again when the
    /// lease ends) or fully recorded.
    /// On shutdown, or when the lease would run out before the next delivery
    /// ends, the rows not yet delivered are released at once.
    pub async fn deliver_batch(&self, shutdown: &CancellationToken) -> anyhow::Result<usize> {
        let mut conn = self.pool.get().await.context("taking a connection")?;
        let leased_until = Instant::now() + LEASE;
        let lease = Utc::now() + chrono::Duration::from_std(LEASE).unwrap_or_default();
        let batch = self.config.relay_batch.max(1);
        let rows: Vec<Claimed> = conn
            .transaction::<_, anyhow::Error, _>(async |conn| {
                let rows: Vec<Claimed> = table::table
                    .filter(table::published_at.is_null())
                    .filter(table::next_attempt_at.le(diesel::dsl::now))
                    .order((table::created_at, table::id))
                    .limit(batch)
                    .select((table::id, table::payload, table::attempts, table::delivered_to))
                    .for_update()
                    .skip_locked()
                    .load(conn)
                    .await?;
                let ids: Vec<Uuid> = rows.iter().map(|(id, ..)| *id).collect();
                diesel::update(table::table.filter(table::id.eq_any(&ids)))
                    .set(table::next_attempt_at.eq(lease))
                    .execute(conn)
                    .await?;
                Ok(rows)
            })
            .await?;
        // The longest one event's delivery can take: one publish, or one
        // call per subscriber.
        let calls = if self.nats.is_some() { 1 } else { self.subscribers.len() };
        let longest = DELIVERY_TIMEOUT.saturating_mul(u32::try_from(calls).unwrap_or(u32::MAX));
        for (index, (id, payload, attempts, delivered_to)) in rows.iter().enumerate() {
            // Past the lease another relay may claim the row and send it
            // too: hand the rest back instead (after one, so a relay always
            // makes progress).
            if index > 0 && Instant::now() + longest > leased_until {
                self.release(&mut conn, &rows[index..]).await?;
                return Ok(index);
            }
            let delivery = async {
                match Event::decode(payload.as_slice()) {
                    Ok(event) => match &self.nats {
                        Some(broker) => {
                            self.publish(broker, &event, delivered_to.as_deref().unwrap_or_default())
                                .await
                        }
                        None => self.deliver(&event, delivered_to.as_deref().unwrap_or_default()).await,
                    },
                    Err(err) => Sent::failed(delivered_to, anyhow::anyhow!("undecodable event: {err}")),
                }
            };
            let sent = tokio::select! {
                sent = delivery => sent,
                () = shutdown.cancelled() => {
                    // At least once: whatever was in flight is sent again later.
                    self.release(&mut conn, &rows[index..]).await?;
                    return Ok(index);
                }
            };
            match sent.error {
                None if sent.wanted == 0 => {
                    // Nobody subscribes to this type: done, and kept on record
                    // until the retention period ends.
                    diesel::update(table::table.find(id))
                        .set((
                            table::published_at.eq(diesel::dsl::now),
                            ErrorClear { last_error: None },
                        ))
                        .execute(&mut conn)
                        .await?;
                }
                None => {
                    // Delivered: the payload may carry secrets (reset tokens),
                    // so it is not kept.
                    diesel::update(table::table.find(id))
                        .set((
                            table::published_at.eq(diesel::dsl::now),
                            table::delivered_to.eq(sent.delivered_to),
                            PayloadScrub {
                                payload: Vec::new(),
                                last_error: None,
                            },
                        ))
                        .execute(&mut conn)
                        .await?;
                }
                Some(err) => {
                    let wait = backoff(*attempts, Duration::from_millis(self.config.relay_max_backoff_ms));
                    tracing::warn!(event_id = %id, attempts = attempts + 1, ?wait, error = format!("{err:#}"), "event delivery failed; will retry");
                    let next = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                    // Who accepted it is recorded with the failure, in one
                    // statement: they are not sent it again. Only while it is
                    // not done: a relay that overran its lease must not mark
                    // failed what another delivered.
                    diesel::update(table::table.find(id).filter(table::published_at.is_null()))
                        .set((
                            RetrySchedule {
                                attempts: attempts + 1,
                                next_attempt_at: next,
                                last_error: format!("{err:#}"),
                            },
                            table::delivered_to.eq(sent.delivered_to),
                        ))
                        .execute(&mut conn)
                        .await?;
                }
            }
        }
        Ok(rows.len())
    }

    /// Makes `unsent` due again at once, for any relay to claim.
    async fn release(&self, conn: &mut AsyncPgConnection, unsent: &[Claimed]) -> anyhow::Result<()> {
        let ids: Vec<Uuid> = unsent.iter().map(|(id, ..)| *id).collect();
        diesel::update(table::table.filter(table::id.eq_any(&ids)))
            .set(table::next_attempt_at.eq(diesel::dsl::now))
            .execute(conn)
            .await
            .context("releasing undelivered events")?;
        Ok(())
    }

    /// Publishes how many events wait and how long the oldest has, every
    /// [`BACKLOG_INTERVAL`] until `shutdown`.
    async fn measure_backlog(self, shutdown: CancellationToken) {
        loop {
            if let Err(err) = self.backlog().await {
                tracing::warn!(error = format!("{err:#}"), "measuring the outbox backlog failed");
            }
            tokio::select! {
                () = tokio::time::sleep(BACKLOG_INTERVAL) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn backlog(&self) -> anyhow::Result<()> {
        let mut conn = self.pool.get().await.context("taking a connection")?;
        let (depth, oldest): (i64, Option<chrono::DateTime<Utc>>) = table::table
            .filter(table::published_at.is_null())
            .select((diesel::dsl::count_star(), diesel::dsl::min(table::created_at)))
            .get_result(&mut conn)
            .await?;
        let age = oldest.map_or(Duration::ZERO, |oldest| {
            (Utc::now() - oldest).to_std().unwrap_or_default()
        });
        self.metrics.backlog(depth, age);
        Ok(())
    }

    /// Deletes events delivered (or unwanted) longer than the retention
    /// period ago, and events whose secret has expired.
    async fn prune(&self) -> anyhow::Result<()> {
        let retention = chrono::Duration::from_std(Duration::from_secs(self.config.outbox_retention_secs))
            .context("KEEL_OUTBOX_RETENTION_SECS is too large")?;
        let mut conn = self.pool.get().await.context("taking a connection")?;
        let deleted = diesel::delete(
            table::table.filter(
                table::published_at
                    .lt(Utc::now() - retention)
                    // A secret that no longer works is of no use to anyone:
                    // its event goes, delivered or not.
                    .or(table::discard_after.lt(diesel::dsl::now)),
            ),
        )
        .execute(&mut conn)
        .await?;
        if deleted > 0 {
            tracing::debug!(deleted, "deleted old outbox events");
        }
        Ok(())
    }

    /// Sends `event` to every subscriber that wants it and is not in
    /// `delivered_to` (those accepted it on an earlier attempt); all must
    /// accept. One subscriber's failure does not keep the event from the
    /// others.
    ///
    /// The delivery has a span of its own (`outbox.relay`) in the producer's
    /// trace, under the span that wrote the event; each Deliver call carries
    /// this span's context, so the consumer's work joins the trace under it.
    async fn deliver(&self, event: &Event, delivered_to: &[String]) -> Sent {
        let mut sent = Sent {
            wanted: 0,
            delivered_to: delivered_to.to_vec(),
            error: None,
        };
        let Some(payload) = &event.payload else {
            return sent;
        };
        let event_type = EventType::of(payload);
        let span = tracing::info_span!(
            parent: None,
            "outbox.relay",
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            keel.service = %event.source,
            event.id = %event.id,
            "event.type" = event_type.as_str(),
            delivered = tracing::field::Empty,
        );
        crate::serve::telemetry::continue_trace(&span, &event.trace_context);
        let mut failures = Vec::new();
        async {
            for subscriber in self.subscribers.iter().filter(|s| s.event_types.contains(&event_type)) {
                sent.wanted += 1;
                if delivered_to.iter().any(|name| name == subscriber.name) {
                    continue;
                }
                let mut request = tonic::Request::new(DeliverRequest {
                    event: Some(event.clone()),
                });
                request.set_timeout(DELIVERY_TIMEOUT);
                match EventSinkClient::new(subscriber.channel.clone()).deliver(request).await {
                    Ok(_) => {
                        self.metrics.delivered(subscriber.name, "delivered");
                        sent.delivered_to.push(subscriber.name.to_owned());
                    }
                    Err(status) => {
                        self.metrics.delivered(subscriber.name, "failed");
                        failures.push(format!(
                            "delivering {event_type} {} to {}: {status}",
                            event.id, subscriber.name
                        ));
                    }
                }
            }
        }
        .instrument(span.clone())
        .await;
        if failures.is_empty() {
            span.record("delivered", sent.wanted);
        } else {
            span.record("otel.status_code", "ERROR");
            sent.error = Some(anyhow::anyhow!(failures.join("; ")));
        }
        sent
    }
}

impl Relay {
    /// Publishes `event` to NATS, waiting for JetStream to store it; the
    /// subscribers are the broker's concern. `delivered_to` (from gRPC
    /// deliveries before NATS was configured) is kept as it is.
    ///
    /// The publish has a span of its own (`outbox.relay`, as a gRPC
    /// delivery has) under the span that wrote the event, and the message
    /// carries this span's context, so the consumer's work joins the trace
    /// under it.
    async fn publish(&self, broker: &Broker, event: &Event, delivered_to: &[String]) -> Sent {
        let mut sent = Sent {
            wanted: 0,
            delivered_to: delivered_to.to_vec(),
            error: None,
        };
        let Some(payload) = &event.payload else {
            return sent;
        };
        // Every event is published, wanted by a consumer today or not:
        // the stream keeps it for consumers to come.
        sent.wanted = 1;
        let event_type = EventType::of(payload);
        let span = tracing::info_span!(
            parent: None,
            "outbox.relay",
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            keel.service = %event.source,
            event.id = %event.id,
            "event.type" = event_type.as_str(),
            messaging.system = "nats",
            messaging.destination.name = %broker.names().event_subject(event_type),
            delivered = tracing::field::Empty,
        );
        crate::serve::telemetry::continue_trace(&span, &event.trace_context);
        let trace_context = crate::serve::telemetry::trace_context_of(&span);
        match broker
            .publish_event(event, &trace_context)
            .instrument(span.clone())
            .await
        {
            Ok(published) => {
                let outcome = if published.duplicate { "duplicate" } else { "delivered" };
                self.metrics.delivered(NATS_SUBSCRIBER, outcome);
                span.record("delivered", 1);
                tracing::debug!(parent: &span, sequence = published.sequence, duplicate = published.duplicate, "event published to NATS");
            }
            Err(err) => {
                self.metrics.delivered(NATS_SUBSCRIBER, "failed");
                span.record("otel.status_code", "ERROR");
                sent.error = Some(err.context(format!("publishing {event_type} {} to NATS", event.id)));
            }
        }
        sent
    }
}

/// A claimed row: its id, payload, attempts so far and the subscribers that
/// accepted it already.
type Claimed = (Uuid, Vec<u8>, i32, Option<Vec<String>>);

/// How one event's delivery went.
struct Sent {
    /// How many subscribers want its type (0: it is done at once).
    wanted: usize,
    /// Who has accepted it, on this attempt or an earlier one.
    delivered_to: Vec<String>,
    /// Why some subscriber has not, if one has not.
    error: Option<anyhow::Error>,
}

impl Sent {
    /// A delivery that failed before any subscriber was called.
    fn failed(delivered_to: &Option<Vec<String>>, error: anyhow::Error) -> Self {
        Sent {
            wanted: 0,
            delivered_to: delivered_to.clone().unwrap_or_default(),
            error: Some(error),
        }
    }
}

/// 100 ms doubled per attempt, capped at `max`, with "equal jitter": half the
/// wait is fixed, half random, so retries of many events spread out.
pub fn backoff(attempts: i32, max: Duration) -> Duration {
    let exponent = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
    let full = Duration::from_millis(100).saturating_mul(1u32 << exponent).min(max);
    full / 2 + full.mul_f64(rand::random::<f64>() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_must_remember_events_longer_than_producers_keep_them() {
        assert!(RelayConfig::default().check().is_ok());
        let shorter = RelayConfig {
            processed_events_retention_secs: 7 * 24 * 3600,
            ..RelayConfig::default()
        };
        assert!(shorter.check().is_err(), "no longer than the outbox retention");
        let under_backoff = RelayConfig {
            outbox_retention_secs: 60,
            relay_max_backoff_ms: 3_600_000,
            processed_events_retention_secs: 2 * 3600 - 1,
            ..RelayConfig::default()
        };
        assert!(under_backoff.check().is_err(), "an hour past the longest backoff");
        assert!(
            RelayConfig {
                processed_events_retention_secs: 2 * 3600,
                ..under_backoff
            }
            .check()
            .is_ok()
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_a_cap() {
        let max = Duration::from_secs(60);
        for attempts in 0..8 {
            let full = Duration::from_millis(100 * (1 << attempts));
            let wait = backoff(attempts, max);
            assert!(wait >= full / 2 && wait <= full, "attempt {attempts}: {wait:?}");
        }
        assert!(backoff(30, max) <= max);
        assert!(backoff(30, max) >= max / 2);
    }
}
