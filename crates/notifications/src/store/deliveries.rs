//! Deliveries: queued with the event, claimed for each attempt
//! ([`super::claims`]), and ended as delivered, dead or dropped; a worker that
//! dies mid-attempt only delays its delivery until the lease runs out.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::{
    AsChangeset, BoolExpressionMethods as _, ExpressionMethods as _, Insertable, QueryDsl as _, QueryResult, Queryable,
    Selectable,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::{
    domain::{Channel, DeliveryState},
    schema::deliveries,
};

/// The channel NOTIFY wakes the workers on when a delivery is due.
pub const NOTIFY_CHANNEL: &str = "keel_deliveries";

/// A delivery as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = deliveries)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub event_id: Uuid,
    pub channel: Channel,
    pub target: String,
    pub user_id: Uuid,
    pub event_type: String,
    pub event: Option<Vec<u8>>,
    pub state: DeliveryState,
    pub attempt_count: i32,
    pub next_attempt_time: DateTime<Utc>,
    pub lease_until: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: String,
    pub create_time: DateTime<Utc>,
    pub finish_time: Option<DateTime<Utc>>,
}

/// A delivery to queue.
#[derive(Debug, Insertable)]
#[diesel(table_name = deliveries)]
pub struct NewDelivery<'a> {
    pub id: Uuid,
    pub event_id: Uuid,
    pub channel: Channel,
    pub target: &'a str,
    pub user_id: Uuid,
    pub event_type: &'a str,
    pub event: &'a [u8],
}

/// Queues a delivery once per (event, channel, target), waking the workers
/// when the transaction commits.
pub async fn enqueue(conn: &mut AsyncPgConnection, new: &NewDelivery<'_>) -> QueryResult<bool> {
    let inserted = diesel::insert_into(deliveries::table)
        .values(new)
        .on_conflict((deliveries::event_id, deliveries::channel, deliveries::target))
        .do_nothing()
        .execute(conn)
        .await?;
    if inserted == 1 {
        keel_platform::db::notify(conn, NOTIFY_CHANNEL, new.channel.as_str()).await?;
    }
    Ok(inserted == 1)
}

/// The held delivery `id` as this attempt left it, if the hold is still
/// this attempt's (a lease that ran out may have passed it on).
fn held(id: Uuid, attempt: i32) -> deliveries::BoxedQuery<'static, diesel::pg::Pg> {
    deliveries::table
        .filter(
            deliveries::id
                .eq(id)
                .and(deliveries::state.eq(DeliveryState::Pending))
                .and(deliveries::attempt_count.eq(attempt)),
        )
        .into_boxed()
}

/// A delivery the receiver took: its event forgotten and its hold released.
#[derive(AsChangeset)]
// None must write NULL here, not leave the column as it is.
#[diesel(table_name = deliveries, treat_none_as_null = true)]
struct DeliverySuccess {
    state: DeliveryState,
    event: Option<Vec<u8>>,
    lease_until: Option<DateTime<Utc>>,
}

/// Records that the receiver took it; forgets the event (and any secret in
/// it). Returns false when the attempt no longer held it.
pub async fn delivered(conn: &mut AsyncPgConnection, id: Uuid, attempt: i32) -> QueryResult<bool> {
    let ids = held(id, attempt).select(deliveries::id);
    let changed = diesel::update(deliveries::table.filter(deliveries::id.eq_any(ids)))
        .set((
            DeliverySuccess {
                state: DeliveryState::Delivered,
                event: None,
                lease_until: None,
            },
            deliveries::finish_time.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(changed == 1)
}

/// A failed attempt recorded, its hold released, and the next attempt scheduled.
#[derive(AsChangeset)]
// None must write NULL here, not leave the column as it is.
#[diesel(table_name = deliveries, treat_none_as_null = true)]
struct RetrySchedule<'a> {
    next_attempt_time: DateTime<Utc>,
    lease_until: Option<DateTime<Utc>>,
    last_status: Option<i32>,
    last_error: &'a str,
}

/// Schedules the next attempt after `delay`.
pub async fn retry_later(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    attempt: i32,
    delay: Duration,
    status: Option<i32>,
    error: &str,
) -> QueryResult<bool> {
    let next = Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(24));
    let ids = held(id, attempt).select(deliveries::id);
    let changed = diesel::update(deliveries::table.filter(deliveries::id.eq_any(ids)))
        .set(RetrySchedule {
            next_attempt_time: next,
            lease_until: None,
            last_status: status,
            last_error: error,
        })
        .execute(conn)
        .await?;
    Ok(changed == 1)
}

/// A held delivery ended as its target went away: its event forgotten, its hold released, why recorded.
#[derive(AsChangeset)]
// None must write NULL here, not leave the column as it is.
#[diesel(table_name = deliveries, treat_none_as_null = true)]
struct DeliveryDrop<'a> {
    state: DeliveryState,
    event: Option<Vec<u8>>,
    lease_until: Option<DateTime<Utc>>,
    last_error: &'a str,
}

/// Ends a delivery whose target went away.
pub async fn drop_delivery(conn: &mut AsyncPgConnection, id: Uuid, attempt: i32, why: &str) -> QueryResult<bool> {
    let ids = held(id, attempt).select(deliveries::id);
    let changed = diesel::update(deliveries::table.filter(deliveries::id.eq_any(ids)))
        .set((
            DeliveryDrop {
                state: DeliveryState::Dropped,
                event: None,
                lease_until: None,
                last_error: why,
            },
            deliveries::finish_time.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(changed == 1)
}

/// A delivery given up on: its hold released, its last failure recorded (its event stays).
#[derive(AsChangeset)]
// None must write NULL here, not leave the column as it is.
#[diesel(table_name = deliveries, treat_none_as_null = true)]
struct DeadLettering<'a> {
    state: DeliveryState,
    lease_until: Option<DateTime<Utc>>,
    last_status: Option<i32>,
    last_error: &'a str,
}

/// Gives up on a held delivery; its event is kept for a redelivery. Returns
/// false when the attempt no longer held it. Its dead letter
/// ([`super::dead_letters::insert`]) belongs in the same transaction: a
/// dead delivery without one could never be seen or redelivered.
pub async fn mark_dead(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    attempt: i32,
    status: Option<i32>,
    error: &str,
) -> QueryResult<bool> {
    let ids = held(id, attempt).select(deliveries::id);
    let changed = diesel::update(deliveries::table.filter(deliveries::id.eq_any(ids)))
        .set((
            DeadLettering {
                state: DeliveryState::Dead,
                lease_until: None,
                last_status: status,
                last_error: error,
            },
            deliveries::finish_time.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(changed == 1)
}

/// A dead delivery queued again: pending, due now, with a fresh schedule.
#[derive(AsChangeset)]
// None must write NULL here, not leave the column as it is.
#[diesel(table_name = deliveries, treat_none_as_null = true)]
struct Requeue {
    state: DeliveryState,
    attempt_count: i32,
    lease_until: Option<DateTime<Utc>>,
    finish_time: Option<DateTime<Utc>>,
}

/// Queues a dead delivery again with a fresh schedule, waking the workers of
/// its channel when the transaction commits. Returns false when it is not
/// dead.
pub async fn requeue(conn: &mut AsyncPgConnection, id: Uuid, channel: Channel) -> QueryResult<bool> {
    let changed =
        diesel::update(deliveries::table.filter(deliveries::id.eq(id).and(deliveries::state.eq(DeliveryState::Dead))))
            .set((
                Requeue {
                    state: DeliveryState::Pending,
                    attempt_count: 0,
                    lease_until: None,
                    finish_time: None,
                },
                deliveries::next_attempt_time.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await?;
    if changed == 1 {
        keel_platform::db::notify(conn, NOTIFY_CHANNEL, channel.as_str()).await?;
    }
    Ok(changed == 1)
}

/// Deletes deliveries that finished (delivered or dropped) more than
/// `retention` ago; dead ones stay with their dead letters.
pub async fn prune(conn: &mut AsyncPgConnection, retention: Duration) -> QueryResult<usize> {
    let before = Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(7));
    diesel::delete(
        deliveries::table.filter(
            deliveries::state
                .eq_any([DeliveryState::Delivered, DeliveryState::Dropped])
                .and(deliveries::finish_time.lt(before)),
        ),
    )
    .execute(conn)
    .await
}

/// Pending deliveries ended as their endpoint went away: their events forgotten, why recorded.
#[derive(AsChangeset)]
// None must write NULL here, not leave the column as it is.
#[diesel(table_name = deliveries, treat_none_as_null = true)]
struct PendingDrop<'a> {
    state: DeliveryState,
    event: Option<Vec<u8>>,
    last_error: &'a str,
}

/// Ends every pending delivery to an endpoint (deleted or disabled).
pub async fn drop_pending_for(conn: &mut AsyncPgConnection, endpoint: Uuid, why: &str) -> QueryResult<usize> {
    diesel::update(
        deliveries::table.filter(
            deliveries::channel
                .eq(Channel::Webhook)
                .and(deliveries::target.eq(endpoint.to_string()))
                .and(deliveries::state.eq(DeliveryState::Pending)),
        ),
    )
    .set((
        PendingDrop {
            state: DeliveryState::Dropped,
            event: None,
            last_error: why,
        },
        deliveries::finish_time.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .await
}

/// When the longest-waiting delivery of each channel came due: pending, due,
/// and held by no worker (it waits for a free worker, or for its endpoint to
/// be under its limit).
pub async fn oldest_due(conn: &mut AsyncPgConnection) -> QueryResult<Vec<(Channel, Option<DateTime<Utc>>)>> {
    deliveries::table
        .filter(
            deliveries::state
                .eq(DeliveryState::Pending)
                .and(deliveries::next_attempt_time.le(diesel::dsl::now))
                .and(
                    deliveries::lease_until
                        .is_null()
                        .or(deliveries::lease_until.lt(diesel::dsl::now)),
                ),
        )
        .group_by(deliveries::channel)
        .select((deliveries::channel, diesel::dsl::min(deliveries::next_attempt_time)))
        .load(conn)
        .await
}
