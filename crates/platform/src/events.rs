//! The consumer side of events: who may deliver, and exactly-once effects on
//! top of at-least-once delivery.

use diesel::ExpressionMethods as _;
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use keel::events::v1::{DeliverRequest, event::Payload};
use uuid::Uuid;

use crate::{error::Error, principal::principal};

/// The scope a relay's token must carry to deliver events.
pub const DELIVER_SCOPE: &str = "events.deliver";

diesel::table! {
    /// Events a consumer has applied; every consuming service has this table.
    processed_events (event_id) {
        event_id -> Uuid,
        processed_at -> Timestamptz,
    }
}

/// A delivered event, checked: the caller holds `events.deliver` and is the
/// event's source, and the event has an id and a payload.
#[derive(Debug)]
pub struct Delivery {
    /// The event's id, the consumer's idempotency key.
    pub event_id: Uuid,
    /// What happened.
    pub payload: Payload,
}

/// Reads and authorizes a Deliver call.
pub fn delivery(request: tonic::Request<DeliverRequest>) -> Result<Delivery, Error> {
    let producer = principal(&request)?
        .service_with_scope(DELIVER_SCOPE)?
        .client_id
        .clone();
    let event = request
        .into_inner()
        .event
        .ok_or_else(|| Error::invalid_field("event", "is required"))?;
    // A service delivers only its own events: holding `events.deliver` does
    // not let one service speak for another.
    if event.source != producer {
        return Err(Error::permission_denied(
            "EVENT_SOURCE_MISMATCH",
            format!("client {producer} may only deliver its own events"),
        ));
    }
    let event_id = Uuid::parse_str(&event.id).map_err(|_| Error::invalid_field("event.id", "must be a UUID"))?;
    let payload = event
        .payload
        .ok_or_else(|| Error::invalid_field("event.payload", "is required"))?;
    Ok(Delivery { event_id, payload })
}

/// Records `event_id` as processed, inside the caller's transaction. Returns
/// false when it was processed before: the caller then applies nothing.
pub async fn first_delivery(conn: &mut AsyncPgConnection, event_id: Uuid) -> Result<bool, Error> {
    let inserted = diesel::insert_into(processed_events::table)
        .values(processed_events::event_id.eq(event_id))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}
