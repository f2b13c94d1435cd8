//! The consumer side of events: who may deliver, and exactly-once effects on
//! top of at-least-once delivery.

pub mod nats;
pub mod outbox;
pub mod relay;
pub mod retention;

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, SystemTime},
};

use diesel::ExpressionMethods as _;
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use keel::events::v1::{DeliverRequest, event::Payload};
use uuid::Uuid;

use crate::{auth::principal::principal, auth::scopes, error::Error};

/// The type of an event, named once for producers, consumers and the outbox's
/// `event_type` column (so a producer and its consumers cannot disagree on a
/// string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// `user.registered`
    UserRegistered,
    /// `user.password_reset_requested`
    PasswordResetRequested,
    /// `user.email_verification_requested`
    EmailVerificationRequested,
    /// `order.placed`
    OrderPlaced,
    /// `order.paid`
    OrderPaid,
    /// `order.shipped`
    OrderShipped,
    /// `order.cancelled`
    OrderCancelled,
    /// `balance.changed`
    BalanceChanged,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 8] = [
        EventType::UserRegistered,
        EventType::PasswordResetRequested,
        EventType::EmailVerificationRequested,
        EventType::OrderPlaced,
        EventType::OrderPaid,
        EventType::OrderShipped,
        EventType::OrderCancelled,
        EventType::BalanceChanged,
    ];

    /// The stable name, as stored in the outbox.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::UserRegistered => "user.registered",
            EventType::PasswordResetRequested => "user.password_reset_requested",
            EventType::EmailVerificationRequested => "user.email_verification_requested",
            EventType::OrderPlaced => "order.placed",
            EventType::OrderPaid => "order.paid",
            EventType::OrderShipped => "order.shipped",
            EventType::OrderCancelled => "order.cancelled",
            EventType::BalanceChanged => "balance.changed",
        }
    }

    /// Whether events of this type carry a secret (a one-time token, sealed
    /// with the event secrets key that only producer and consumers hold).
    pub const fn carries_secret(self) -> bool {
        matches!(
            self,
            EventType::PasswordResetRequested | EventType::EmailVerificationRequested
        )
    }

    /// The type of `payload`.
    pub const fn of(payload: &Payload) -> Self {
        match payload {
            Payload::UserRegistered(_) => EventType::UserRegistered,
            Payload::PasswordResetRequested(_) => EventType::PasswordResetRequested,
            Payload::EmailVerificationRequested(_) => EventType::EmailVerificationRequested,
            Payload::OrderPlaced(_) => EventType::OrderPlaced,
            Payload::OrderPaid(_) => EventType::OrderPaid,
            Payload::OrderShipped(_) => EventType::OrderShipped,
            Payload::OrderCancelled(_) => EventType::OrderCancelled,
            Payload::BalanceChanged(_) => EventType::BalanceChanged,
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventType {
    type Err = anyhow::Error;

    /// Fails loudly on a name no event type has.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == name)
            .ok_or_else(|| anyhow::anyhow!("unknown event type {name:?}"))
    }
}

diesel::table! {
    /// Events a consumer has applied; every service's database has this table
    /// (created by [`crate::db::SHARED_MIGRATIONS`]).
    processed_events (event_id) {
        event_id -> Uuid,
        processed_at -> Timestamptz,
    }
}

/// What an event sink accepts: each event type only from the service that
/// produces it (built from the registry,
/// [`crate::registry::Registry::event_producers`], so a type has at most one
/// producer), and only while the event is young enough that a redelivery of
/// it is still recognised ([`retention`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventProducers {
    owners: BTreeMap<EventType, &'static str>,
    max_age: Duration,
}

impl Default for EventProducers {
    fn default() -> Self {
        Self {
            owners: BTreeMap::new(),
            max_age: retention::event_horizon(retention::DEFAULT_PROCESSED_EVENTS_RETENTION),
        }
    }
}

impl EventProducers {
    /// The map from `(event type, producing service)` pairs, accepting events
    /// up to the horizon of the default retention; an error when a type is
    /// given two different producers.
    pub fn new(pairs: impl IntoIterator<Item = (EventType, &'static str)>) -> anyhow::Result<Self> {
        let mut producers = EventProducers::default();
        for (event_type, producer) in pairs {
            if let Some(other) = producers.owners.insert(event_type, producer)
                && other != producer
            {
                anyhow::bail!("{event_type} is produced by both {other} and {producer}; an event type has one owner");
            }
        }
        Ok(producers)
    }

    /// The same producers, accepting events at most `max_age` old (the
    /// horizon of the consumer's `processed_events` retention,
    /// [`retention::event_horizon`]).
    pub fn with_max_age(self, max_age: Duration) -> Self {
        Self { max_age, ..self }
    }

    /// The service that produces `event_type`, if any does.
    pub fn producer(&self, event_type: EventType) -> Option<&'static str> {
        self.owners.get(&event_type).copied()
    }

    /// Every event type and its producer.
    pub fn iter(&self) -> impl Iterator<Item = (EventType, &'static str)> + '_ {
        self.owners.iter().map(|(t, p)| (*t, *p))
    }

    /// The oldest an event may be and still be accepted.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }
}

/// A delivered event, checked: the caller holds `events.deliver` and is the
/// event's source, the source is the service that produces its type, and the
/// event has an id and a payload.
#[derive(Debug)]
pub struct Delivery {
    /// The event's id, the consumer's idempotency key.
    pub event_id: Uuid,
    /// The service that produced it.
    pub source: String,
    /// When the producer committed it.
    pub create_time: Option<prost_types::Timestamp>,
    /// What happened.
    pub payload: Payload,
    /// The trace context of the span that wrote the event (the producer's
    /// `outbox.enqueue`).
    pub trace_context: HashMap<String, String>,
}

impl Delivery {
    /// The span of the consumer applying this event (`event.consume`), for
    /// the Keel service `consumer`: a child of the current span (the Deliver
    /// call, itself under the relay's span) with a link to the producer's
    /// span, so both ends of the hop find each other.
    pub fn consume_span(&self, consumer: &'static str) -> tracing::Span {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let span = tracing::info_span!(
            "event.consume",
            otel.kind = "consumer",
            keel.service = consumer,
            event.id = %self.event_id,
            event.source = %self.source,
            "event.type" = EventType::of(&self.payload).as_str(),
        );
        let producer = crate::serve::telemetry::extract_trace_context(&self.trace_context);
        span.add_link(producer.span().span_context().clone());
        span
    }

    /// The event again, as a consumer that keeps it stores it.
    pub fn to_event(&self) -> keel::events::v1::Event {
        keel::events::v1::Event {
            id: self.event_id.to_string(),
            source: self.source.clone(),
            create_time: self.create_time,
            trace_context: Default::default(),
            payload: Some(self.payload.clone()),
        }
    }
}

/// Reads and authorizes a Deliver call: every sink goes through here, so
/// none can forget a check.
pub fn delivery(request: tonic::Request<DeliverRequest>, producers: &EventProducers) -> Result<Delivery, Error> {
    let caller = principal(&request)?
        .service_with_scope(scopes::EVENTS_DELIVER)?
        .client_id
        .clone();
    let event = request
        .into_inner()
        .event
        .ok_or_else(|| Error::invalid_field("event", "required", "is required"))?;
    // A service delivers only its own events: holding `events.deliver` does
    // not let one service speak for another.
    if event.source != caller {
        return Err(Error::permission_denied(
            "EVENT_SOURCE_MISMATCH",
            format!("client {caller} may only deliver its own events"),
        ));
    }
    let event_id = crate::serve::rpc::parse_id("event.id", &event.id)?;
    let payload = event
        .payload
        .ok_or_else(|| Error::invalid_field("event.payload", "required", "is required"))?;
    // Its own events are the types it produces: a client with
    // `events.deliver` cannot announce, under its own name, what only
    // another service may (a UserRegistered from anyone but auth).
    let event_type = EventType::of(&payload);
    let owner = producers.producer(event_type);
    if owner != Some(event.source.as_str()) {
        return Err(Error::permission_denied(
            "EVENT_SOURCE_NOT_OWNER",
            format!(
                "{} events come only from {}, not {}",
                event_type,
                owner.unwrap_or("a registered producer"),
                event.source
            ),
        )
        .with_metadata("event_type", event_type.as_str())
        .with_metadata("source", event.source));
    }
    check_age(event_id, event.create_time, producers.max_age())?;
    Ok(Delivery {
        event_id,
        source: event.source,
        create_time: event.create_time,
        payload,
        trace_context: event.trace_context,
    })
}

/// Refuses an event older than `max_age`: its `processed_events` row, if it
/// was applied before, may already be pruned, so it could apply twice (see
/// [`retention`]). It stays in its producer's outbox, with this error as its
/// last, for an operator to see.
fn check_age(event_id: Uuid, create_time: Option<prost_types::Timestamp>, max_age: Duration) -> Result<(), Error> {
    let create_time =
        create_time.ok_or_else(|| Error::invalid_field("event.create_time", "required", "is required"))?;
    let created = SystemTime::try_from(create_time)
        .map_err(|_| Error::invalid_field("event.create_time", "TIMESTAMP_INVALID", "is not a valid time"))?;
    // A producer's clock a little ahead of ours makes a new event look
    // younger than zero: that is young enough.
    let age = SystemTime::now().duration_since(created).unwrap_or_default();
    if age <= max_age {
        return Ok(());
    }
    Err(Error::failed_precondition(
        "EVENT_TOO_OLD",
        format!(
            "event {event_id} is {}s old, past the {}s within which a redelivery is recognised; it is refused so it \
             cannot apply twice",
            age.as_secs(),
            max_age.as_secs()
        ),
    )
    .with_metadata("event_id", event_id.to_string())
    .with_metadata("event_age_secs", age.as_secs().to_string())
    .with_metadata("max_age_secs", max_age.as_secs().to_string()))
}

/// Records `event_id` as processed, inside the caller's transaction. Returns
/// false when it was processed before: the caller then applies nothing. The
/// record is kept for the processed events retention ([`retention`]), past
/// the age at which [`delivery`] refuses the event.
pub async fn first_delivery(conn: &mut AsyncPgConnection, event_id: Uuid) -> Result<bool, Error> {
    let inserted = diesel::insert_into(processed_events::table)
        .values(processed_events::event_id.eq(event_id))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}
