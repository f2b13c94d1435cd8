//! The card gateway's webhook events already handled, by event id: a
//! redelivered event finds its id here and is not acted on again.

use diesel::{ExpressionMethods as _, Insertable, QueryDsl as _, QueryResult};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};

use crate::schema::card_gateway_events;

/// A handled event to record (`received_at` is the column's default).
#[derive(Debug, Insertable)]
#[diesel(table_name = card_gateway_events)]
pub struct NewEvent<'a> {
    /// The gateway's event id (`evt_...`).
    pub id: &'a str,
    /// e.g. `payment_intent.succeeded`.
    pub event_type: &'a str,
    /// The object the event is about (`pi_...`).
    pub object_id: &'a str,
}

/// Whether the event `id` was handled already.
pub async fn seen(conn: &mut AsyncPgConnection, id: &str) -> QueryResult<bool> {
    let count: i64 = card_gateway_events::table
        .filter(card_gateway_events::id.eq(id))
        .count()
        .get_result(conn)
        .await?;
    Ok(count > 0)
}

/// Records `event` as handled; an event recorded already stays as it was.
pub async fn record(conn: &mut AsyncPgConnection, event: NewEvent<'_>) -> QueryResult<()> {
    diesel::insert_into(card_gateway_events::table)
        .values(event)
        .on_conflict_do_nothing()
        .execute(conn)
        .await
        .map(drop)
}
