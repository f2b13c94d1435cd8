//! Deliveries and dead letters. A delivery is claimed for one attempt with
//! `FOR UPDATE SKIP LOCKED` and a lease, so several workers (and replicas)
//! share the queue and a worker that dies mid-attempt only delays it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::{
    AsChangeset, BoolExpressionMethods as _, ExpressionMethods as _, Insertable, OptionalExtension as _, QueryDsl as _,
    QueryResult, Queryable, Selectable, SelectableHelper as _,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::{
    domain::{Channel, DeliveryState},
    schema::{dead_letters, deliveries},
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

/// A delivery claimed for one attempt, held until its lease runs out.
#[derive(AsChangeset)]
#[diesel(table_name = deliveries)]
struct Claim {
    lease_until: DateTime<Utc>,
}

/// Claims up to `limit` due deliveries for one attempt each, holding them
/// for `lease`; counts the attempt. Runs its own short transaction.
pub async fn claim(conn: &mut AsyncPgConnection, limit: i64, lease: Duration) -> QueryResult<Vec<DeliveryRow>> {
    use diesel_async::AsyncConnection as _;
    let lease_until = Utc::now() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::minutes(1));
    conn.transaction(async |conn| {
        let due: Vec<Uuid> = deliveries::table
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
            .order_by(deliveries::next_attempt_time.asc())
            .select(deliveries::id)
            .limit(limit)
            .for_update()
            .skip_locked()
            .load(conn)
            .await?;
        diesel::update(deliveries::table.filter(deliveries::id.eq_any(&due)))
            .set((
                Claim { lease_until },
                deliveries::attempt_count.eq(deliveries::attempt_count + 1),
            ))
            .returning(DeliveryRow::as_returning())
            .get_results(conn)
            .await
    })
    .await
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

/// A dead letter as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = dead_letters)]
pub struct DeadLetterRow {
    pub id: Uuid,
    pub delivery_id: Uuid,
    pub channel: Channel,
    pub target: String,
    pub user_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub payload: String,
    pub attempt_count: i32,
    pub last_status: Option<i32>,
    pub last_error: String,
    pub create_time: DateTime<Utc>,
    pub redeliver_time: Option<DateTime<Utc>>,
}

#[derive(Insertable)]
#[diesel(table_name = dead_letters)]
struct NewDeadLetter<'a> {
    id: Uuid,
    delivery_id: Uuid,
    channel: Channel,
    target: &'a str,
    user_id: Uuid,
    event_id: Uuid,
    event_type: &'a str,
    payload: &'a str,
    attempt_count: i32,
    last_status: Option<i32>,
    last_error: &'a str,
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

/// Gives up on a delivery and records a dead letter; the event is kept
/// for a redelivery. Returns false when the attempt no longer held it.
pub async fn dead_letter(
    conn: &mut AsyncPgConnection,
    delivery: &DeliveryRow,
    payload: &str,
    status: Option<i32>,
    error: &str,
) -> QueryResult<bool> {
    let ids = held(delivery.id, delivery.attempt_count).select(deliveries::id);
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
    if changed == 0 {
        return Ok(false);
    }
    diesel::insert_into(dead_letters::table)
        .values(NewDeadLetter {
            id: Uuid::now_v7(),
            delivery_id: delivery.id,
            channel: delivery.channel,
            target: &delivery.target,
            user_id: delivery.user_id,
            event_id: delivery.event_id,
            event_type: &delivery.event_type,
            payload,
            attempt_count: delivery.attempt_count,
            last_status: status,
            last_error: error,
        })
        .execute(conn)
        .await?;
    Ok(true)
}

/// A page of dead letters not yet redelivered, newest first, before `before`.
pub async fn dead_letter_page(
    conn: &mut AsyncPgConnection,
    endpoint: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<DeadLetterRow>> {
    let mut query = dead_letters::table
        .filter(dead_letters::redeliver_time.is_null())
        .select(DeadLetterRow::as_select())
        .order_by(dead_letters::id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(endpoint) = endpoint {
        query = query.filter(
            dead_letters::channel
                .eq(Channel::Webhook)
                .and(dead_letters::target.eq(endpoint.to_owned())),
        );
    }
    if let Some(before) = before {
        query = query.filter(dead_letters::id.lt(before));
    }
    query.load(conn).await
}

/// How many dead letters wait for redelivery.
pub async fn waiting_dead_letters(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    dead_letters::table
        .filter(dead_letters::redeliver_time.is_null())
        .count()
        .get_result(conn)
        .await
}

/// One dead letter, locked until commit.
pub async fn lock_dead_letter(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<DeadLetterRow>> {
    dead_letters::table
        .find(id)
        .select(DeadLetterRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Marks a dead letter redelivered and queues its delivery again with a
/// fresh schedule.
pub async fn redeliver(conn: &mut AsyncPgConnection, dead_letter: &DeadLetterRow) -> QueryResult<DeadLetterRow> {
    diesel::update(deliveries::table.find(dead_letter.delivery_id))
        .set((
            deliveries::state.eq(DeliveryState::Pending),
            deliveries::attempt_count.eq(0),
            deliveries::next_attempt_time.eq(diesel::dsl::now),
            deliveries::lease_until.eq(None::<DateTime<Utc>>),
            deliveries::finish_time.eq(None::<DateTime<Utc>>),
        ))
        .execute(conn)
        .await?;
    keel_platform::db::notify(conn, NOTIFY_CHANNEL, dead_letter.channel.as_str()).await?;
    diesel::update(dead_letters::table.find(dead_letter.id))
        .set(dead_letters::redeliver_time.eq(diesel::dsl::now))
        .returning(DeadLetterRow::as_returning())
        .get_result(conn)
        .await
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
