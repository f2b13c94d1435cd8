//! Debit keys: the lock a key's Debit and VoidDebit take turns under, and
//! the keys that can never debit (declined or voided).

use chrono::{DateTime, Utc};
use diesel::{
    Insertable, OptionalExtension as _, QueryDsl as _, QueryResult, Queryable, Selectable, SelectableHelper as _,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::{domain::DebitKeyState, schema::closed_debit_keys};

/// A debit key that can never debit, as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = closed_debit_keys)]
pub struct ClosedKeyRow {
    pub account_id: Uuid,
    pub request_id: String,
    pub state: DebitKeyState,
    /// The stable reason: a `Decline`'s, or `VOIDED`.
    pub reason: String,
    /// What the declined Debit asked for; None for a voided key.
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    pub reference: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A debit key to close.
#[derive(Debug, Insertable)]
#[diesel(table_name = closed_debit_keys)]
pub struct NewClosedKey<'a> {
    pub account_id: Uuid,
    pub request_id: &'a str,
    pub state: DebitKeyState,
    pub reason: &'a str,
    pub amount_minor: Option<i64>,
    pub currency: Option<&'a str>,
    pub reference: Option<&'a str>,
}

/// Holds a lock on one debit key of one account until the caller's
/// transaction ends: that key's Debit and VoidDebit take turns, even while
/// the account has no row to lock.
pub async fn lock(conn: &mut AsyncPgConnection, account_id: Uuid, request_id: &str) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind::<diesel::sql_types::Text, _>(format!("accounts.debit_key:{account_id}:{request_id}"))
        .execute(conn)
        .await
        .map(drop)
}

pub async fn find_closed(
    conn: &mut AsyncPgConnection,
    account_id: Uuid,
    request_id: &str,
) -> QueryResult<Option<ClosedKeyRow>> {
    closed_debit_keys::table
        .find((account_id, request_id))
        .select(ClosedKeyRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Closes the key unless it is closed already, and returns it as it is
/// stored: the first closing stands.
pub async fn close(conn: &mut AsyncPgConnection, key: NewClosedKey<'_>) -> QueryResult<ClosedKeyRow> {
    let (account_id, request_id) = (key.account_id, key.request_id);
    diesel::insert_into(closed_debit_keys::table)
        .values(&key)
        .on_conflict((closed_debit_keys::account_id, closed_debit_keys::request_id))
        .do_nothing()
        .execute(conn)
        .await?;
    closed_debit_keys::table
        .find((account_id, request_id))
        .select(ClosedKeyRow::as_select())
        .first(conn)
        .await
}
