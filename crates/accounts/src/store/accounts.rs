//! The accounts: a profile and a balance per user.

use chrono::{DateTime, Utc};
use diesel::{
    BoolExpressionMethods as _, ExpressionMethods as _, Insertable, JoinOnDsl as _, NullableExpressionMethods as _,
    OptionalExtension as _, QueryDsl as _, QueryResult, Queryable, Selectable, SelectableHelper as _,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::schema::{accounts, ledger_entries};

/// An account as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = accounts)]
pub struct AccountRow {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub currency: String,
    pub balance_minor: i64,
    pub ledger_seq: i64,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a new account needs; the rest starts at its default.
#[derive(Debug, Insertable)]
#[diesel(table_name = accounts)]
pub struct NewAccount<'a> {
    pub id: Uuid,
    pub email: &'a str,
    pub currency: &'a str,
}

/// Creates the account unless it exists; fills in a missing email. Returns
/// the account either way.
pub async fn ensure(conn: &mut AsyncPgConnection, id: Uuid, email: &str, currency: &str) -> QueryResult<AccountRow> {
    diesel::insert_into(accounts::table)
        .values(&NewAccount { id, email, currency })
        .on_conflict(accounts::id)
        .do_nothing()
        .execute(conn)
        .await?;
    if !email.is_empty() {
        diesel::update(accounts::table.find(id).filter(accounts::email.eq("")))
            .set(accounts::email.eq(email))
            .execute(conn)
            .await?;
    }
    accounts::table
        .find(id)
        .select(AccountRow::as_select())
        .first(conn)
        .await
}

pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<AccountRow>> {
    accounts::table
        .find(id)
        .select(AccountRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The account and when its balance last changed (the time of its newest
/// ledger entry; None if it never did), in one statement: GetBalance's.
pub async fn find_with_balance_time(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<(AccountRow, Option<DateTime<Utc>>)>> {
    let newest = ledger_entries::account_id
        .eq(accounts::id)
        .and(ledger_entries::seq.eq(accounts::ledger_seq));
    accounts::table
        .left_join(ledger_entries::table.on(newest))
        .filter(accounts::id.eq(id))
        .select((AccountRow::as_select(), ledger_entries::created_at.nullable()))
        .first(conn)
        .await
        .optional()
}

/// The account, locked until the transaction ends: every movement of one
/// account goes through this lock, one at a time.
pub async fn lock(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<AccountRow>> {
    accounts::table
        .find(id)
        .select(AccountRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

pub async fn list(conn: &mut AsyncPgConnection, after: Option<Uuid>, limit: i64) -> QueryResult<Vec<AccountRow>> {
    let mut query = accounts::table
        .select(AccountRow::as_select())
        .order(accounts::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(accounts::id.gt(after));
    }
    query.load(conn).await
}

/// Sets the display name if the version still is `expected` (when given).
/// Returns the updated row, or None when the version moved on.
pub async fn update_display_name(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    display_name: &str,
    expected_version: Option<i64>,
) -> QueryResult<Option<AccountRow>> {
    let set = (
        accounts::display_name.eq(display_name),
        accounts::version.eq(accounts::version + 1),
        accounts::updated_at.eq(diesel::dsl::now),
    );
    let updated = match expected_version {
        Some(version) => {
            diesel::update(accounts::table.find(id).filter(accounts::version.eq(version)))
                .set(set)
                .returning(AccountRow::as_returning())
                .get_result(conn)
                .await
        }
        None => {
            diesel::update(accounts::table.find(id))
                .set(set)
                .returning(AccountRow::as_returning())
                .get_result(conn)
                .await
        }
    };
    updated.optional()
}

/// How many accounts there are.
pub async fn count(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    accounts::table.count().get_result(conn).await
}
