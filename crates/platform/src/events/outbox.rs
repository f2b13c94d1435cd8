//! The transactional outbox: a state change and the event that announces it
//! commit together. Call [`enqueue`] inside the transaction that makes the
//! change; a relay delivers the rows afterwards.

use chrono::{DateTime, Utc};
use diesel::ExpressionMethods as _;
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use keel::events::v1::{Event, event::Payload};
use prost::Message as _;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::{error::Error, events::EventType};

diesel::table! {
    /// Events waiting for delivery; every service's database has this table
    /// (created by [`crate::db::SHARED_MIGRATIONS`]).
    outbox (id) {
        id -> Uuid,
        event_type -> Text,
        payload -> Bytea,
        created_at -> Timestamptz,
        published_at -> Nullable<Timestamptz>,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        last_error -> Nullable<Text>,
        discard_after -> Nullable<Timestamptz>,
        delivered_to -> Nullable<Array<Text>>,
    }
}

/// The channel the relay listens on for new rows.
pub const NOTIFY_CHANNEL: &str = "keel_outbox";

/// Writes `payload` to the outbox as a new event from `source`, with the
/// current trace context, and wakes the relay when the transaction commits.
/// An event that carries a secret is deleted when the secret expires.
///
/// The write has a span of its own (`outbox.enqueue`), and the event keeps
/// that span's context: the relay's delivery continues the trace under it,
/// and the consumer links back to it.
pub async fn enqueue(conn: &mut AsyncPgConnection, source: &str, payload: Payload) -> Result<Uuid, Error> {
    let id = Uuid::now_v7();
    let event_type = EventType::of(&payload).as_str();
    let span = tracing::info_span!(
        "outbox.enqueue",
        otel.kind = "producer",
        keel.service = source,
        event.id = %id,
        "event.type" = event_type,
    );
    let discard_after = secret_expiry(&payload);
    let event = Event {
        id: id.to_string(),
        source: source.to_owned(),
        create_time: Some(std::time::SystemTime::now().into()),
        trace_context: crate::serve::telemetry::trace_context_of(&span),
        payload: Some(payload),
    };
    async {
        diesel::insert_into(outbox::table)
            .values((
                outbox::id.eq(id),
                outbox::event_type.eq(event_type),
                outbox::payload.eq(event.encode_to_vec()),
                outbox::discard_after.eq(discard_after),
            ))
            .execute(conn)
            .await?;
        crate::db::notify(conn, NOTIFY_CHANNEL, event_type).await?;
        Ok(id)
    }
    .instrument(span)
    .await
}

/// When the secret an event carries stops working (after which the event is
/// of no use to anyone and is deleted); None for events without one.
fn secret_expiry(payload: &Payload) -> Option<DateTime<Utc>> {
    let expire_time = match payload {
        Payload::PasswordResetRequested(event) => event.expire_time,
        Payload::EmailVerificationRequested(event) => event.expire_time,
        _ => return None,
    }?;
    DateTime::from_timestamp(expire_time.seconds, u32::try_from(expire_time.nanos).unwrap_or(0))
}
