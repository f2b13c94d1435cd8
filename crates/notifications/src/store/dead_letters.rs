//! Dead letters: the deliveries given up on, each listed for an admin until
//! it is redelivered.

use chrono::{DateTime, Utc};
use diesel::{
    BoolExpressionMethods as _, ExpressionMethods as _, Insertable, OptionalExtension as _, QueryDsl as _, QueryResult,
    Queryable, Selectable, SelectableHelper as _,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::{domain::Channel, schema::dead_letters};

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

/// A dead letter to record.
#[derive(Debug, Insertable)]
#[diesel(table_name = dead_letters)]
pub struct NewDeadLetter<'a> {
    pub id: Uuid,
    pub delivery_id: Uuid,
    pub channel: Channel,
    pub target: &'a str,
    pub user_id: Uuid,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub payload: &'a str,
    pub attempt_count: i32,
    pub last_status: Option<i32>,
    pub last_error: &'a str,
}

/// Records a dead letter. Write it in the transaction that marks its
/// delivery dead, so neither is ever seen without the other.
pub async fn insert(conn: &mut AsyncPgConnection, new: &NewDeadLetter<'_>) -> QueryResult<()> {
    diesel::insert_into(dead_letters::table)
        .values(new)
        .execute(conn)
        .await
        .map(drop)
}

/// A page of dead letters not yet redelivered, newest first, before `before`.
pub async fn page(
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
pub async fn waiting(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    dead_letters::table
        .filter(dead_letters::redeliver_time.is_null())
        .count()
        .get_result(conn)
        .await
}

/// One dead letter, locked until commit.
pub async fn lock(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<DeadLetterRow>> {
    dead_letters::table
        .find(id)
        .select(DeadLetterRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Marks a dead letter redelivered (no longer listed). Write it in the
/// transaction that queues its delivery again.
pub async fn mark_redelivered(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<DeadLetterRow> {
    diesel::update(dead_letters::table.find(id))
        .set(dead_letters::redeliver_time.eq(diesel::dsl::now))
        .returning(DeadLetterRow::as_returning())
        .get_result(conn)
        .await
}
