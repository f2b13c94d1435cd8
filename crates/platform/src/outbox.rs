//! The transactional outbox: a state change and the event that announces it
//! commit together. Call [`enqueue`] inside the transaction that makes the
//! change; a relay delivers the rows afterwards.

use diesel::{ExpressionMethods as _, sql_types::Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use keel::events::v1::{Event, event::Payload};
use prost::Message as _;
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
    }
}

/// The channel the relay listens on for new rows.
pub const NOTIFY_CHANNEL: &str = "keel_outbox";

diesel::define_sql_function! {
    /// Postgres `pg_notify(channel, payload)`: delivered when the transaction commits.
    fn pg_notify(channel: Text, payload: Text);
}

/// Writes `payload` to the outbox as a new event from `source`, with the
/// current trace context, and wakes the relay when the transaction commits.
pub async fn enqueue(conn: &mut AsyncPgConnection, source: &str, payload: Payload) -> Result<Uuid, Error> {
    let id = Uuid::now_v7();
    let event_type = EventType::of(&payload).as_str();
    let event = Event {
        id: id.to_string(),
        source: source.to_owned(),
        create_time: Some(std::time::SystemTime::now().into()),
        trace_context: crate::telemetry::current_trace_context(),
        payload: Some(payload),
    };
    diesel::insert_into(outbox::table)
        .values((
            outbox::id.eq(id),
            outbox::event_type.eq(event_type),
            outbox::payload.eq(event.encode_to_vec()),
        ))
        .execute(conn)
        .await?;
    diesel::select(pg_notify(NOTIFY_CHANNEL, event_type))
        .execute(conn)
        .await?;
    Ok(id)
}
