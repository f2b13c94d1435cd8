//! The in-app inbox. Each user's entries are numbered by a per-user sequence
//! taken under the lock of their `inboxes` row, so for one user the numbers
//! commit in order: a reader that has seen number N has seen every number
//! below it, which is what lets a stream join replay and live without a gap.

use chrono::{DateTime, Utc};
use diesel::{
    BoolExpressionMethods as _, ExpressionMethods as _, Insertable, OptionalExtension as _, QueryDsl as _, QueryResult,
    Queryable, Selectable, SelectableHelper as _,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::schema::{inboxes, notifications};

/// The channel NOTIFY announces new entries on; the payload is the user id.
pub const NOTIFY_CHANNEL: &str = "keel_inbox";

/// An inbox entry as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = notifications)]
pub struct NotificationRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub seq: i64,
    pub event_type: String,
    pub event_id: Uuid,
    pub title: String,
    pub body: String,
    pub read_time: Option<DateTime<Utc>>,
    pub create_time: DateTime<Utc>,
}

/// An entry to add; its number is taken when it is inserted.
#[derive(Debug, Clone)]
pub struct NewNotification<'a> {
    pub user_id: Uuid,
    pub event_type: &'a str,
    pub event_id: Uuid,
    pub title: &'a str,
    pub body: &'a str,
}

/// A user's inbox, made with their first entry.
#[derive(Insertable)]
#[diesel(table_name = inboxes)]
struct NewInbox {
    user_id: Uuid,
    last_seq: i64,
}

#[derive(Insertable)]
#[diesel(table_name = notifications)]
struct NotificationInsert<'a> {
    id: Uuid,
    user_id: Uuid,
    seq: i64,
    event_type: &'a str,
    event_id: Uuid,
    title: &'a str,
    body: &'a str,
}

/// Adds an entry (once per event and user) and announces it when the
/// transaction commits. Returns false when the event had given the user an
/// entry before.
pub async fn append(conn: &mut AsyncPgConnection, new: &NewNotification<'_>) -> QueryResult<bool> {
    // Taking the number locks the user's inbox row until commit.
    let seq: i64 = diesel::insert_into(inboxes::table)
        .values(NewInbox {
            user_id: new.user_id,
            last_seq: 1,
        })
        .on_conflict(inboxes::user_id)
        .do_update()
        .set(inboxes::last_seq.eq(inboxes::last_seq + 1))
        .returning(inboxes::last_seq)
        .get_result(conn)
        .await?;
    let inserted = diesel::insert_into(notifications::table)
        .values(NotificationInsert {
            id: Uuid::now_v7(),
            user_id: new.user_id,
            seq,
            event_type: new.event_type,
            event_id: new.event_id,
            title: new.title,
            body: new.body,
        })
        .on_conflict((notifications::event_id, notifications::user_id))
        .do_nothing()
        .execute(conn)
        .await?;
    if inserted == 1 {
        keel_platform::db::notify(conn, NOTIFY_CHANNEL, &new.user_id.to_string()).await?;
    }
    Ok(inserted == 1)
}

/// A page of the user's entries, newest first, below sequence `before`.
pub async fn page(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    before: Option<i64>,
    unread_only: bool,
    limit: i64,
) -> QueryResult<Vec<NotificationRow>> {
    let mut query = notifications::table
        .filter(notifications::user_id.eq(user_id))
        .select(NotificationRow::as_select())
        .order_by(notifications::seq.desc())
        .limit(limit)
        .into_boxed();
    if let Some(before) = before {
        query = query.filter(notifications::seq.lt(before));
    }
    if unread_only {
        query = query.filter(notifications::read_time.is_null());
    }
    query.load(conn).await
}

/// The user's entries after sequence `after`, oldest first.
pub async fn after(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    after: i64,
    limit: i64,
) -> QueryResult<Vec<NotificationRow>> {
    notifications::table
        .filter(notifications::user_id.eq(user_id).and(notifications::seq.gt(after)))
        .select(NotificationRow::as_select())
        .order_by(notifications::seq.asc())
        .limit(limit)
        .load(conn)
        .await
}

/// The newest sequence number the user has (0 for an empty inbox).
pub async fn last_seq(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<i64> {
    Ok(inboxes::table
        .find(user_id)
        .select(inboxes::last_seq)
        .first(conn)
        .await
        .optional()?
        .unwrap_or(0))
}

/// How many of the user's entries are unread.
pub async fn unread_count(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<i64> {
    notifications::table
        .filter(
            notifications::user_id
                .eq(user_id)
                .and(notifications::read_time.is_null()),
        )
        .count()
        .get_result(conn)
        .await
}

/// Takes the user's inbox lock until commit: changes to one user's entries
/// then happen one after another, so overlapping MarkReads can't deadlock
/// on each other's rows.
pub async fn lock_inbox(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<()> {
    inboxes::table
        .find(user_id)
        .select(inboxes::user_id)
        .for_update()
        .load::<Uuid>(conn)
        .await?;
    Ok(())
}

/// The entries with these ids, whoever they belong to, locked until commit
/// (in id order, so any two lockers take them in the same order).
pub async fn lock(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<NotificationRow>> {
    notifications::table
        .filter(notifications::id.eq_any(ids))
        .select(NotificationRow::as_select())
        .order_by(notifications::id.asc())
        .for_update()
        .load(conn)
        .await
}

/// One entry, whoever it belongs to.
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<NotificationRow>> {
    notifications::table
        .find(id)
        .select(NotificationRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Marks the user's unread entries among `ids` read; returns every row of
/// `ids` after the change.
pub async fn mark_read(conn: &mut AsyncPgConnection, user_id: Uuid, ids: &[Uuid]) -> QueryResult<Vec<NotificationRow>> {
    diesel::update(
        notifications::table.filter(
            notifications::user_id
                .eq(user_id)
                .and(notifications::id.eq_any(ids))
                .and(notifications::read_time.is_null()),
        ),
    )
    .set(notifications::read_time.eq(diesel::dsl::now))
    .execute(conn)
    .await?;
    notifications::table
        .filter(notifications::id.eq_any(ids))
        .select(NotificationRow::as_select())
        .load(conn)
        .await
}

/// Marks every unread entry of the user up to sequence `seq` read.
pub async fn mark_read_up_to(conn: &mut AsyncPgConnection, user_id: Uuid, seq: i64) -> QueryResult<usize> {
    diesel::update(
        notifications::table.filter(
            notifications::user_id
                .eq(user_id)
                .and(notifications::seq.le(seq))
                .and(notifications::read_time.is_null()),
        ),
    )
    .set(notifications::read_time.eq(diesel::dsl::now))
    .execute(conn)
    .await
}
