//! The ledger: the append-only entries behind each balance, and the checks
//! and reports an operator runs over them.

use chrono::{DateTime, Utc};
use diesel::{
    AsChangeset, ExpressionMethods as _, Insertable, OptionalExtension as _, QueryDsl as _, QueryResult, Queryable,
    Selectable, SelectableHelper as _,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::schema::{accounts, ledger_entries};

/// A ledger entry as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = ledger_entries)]
pub struct EntryRow {
    pub id: Uuid,
    pub account_id: Uuid,
    pub seq: i64,
    pub kind: String,
    pub amount_minor: i64,
    pub delta_minor: i64,
    pub currency: String,
    pub balance_after_minor: i64,
    pub request_id: String,
    pub reference: String,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    /// For a refund, the debit it gives back.
    pub refund_of: Option<Uuid>,
}

/// What a new ledger entry needs.
#[derive(Debug, Insertable)]
#[diesel(table_name = ledger_entries)]
pub struct NewEntry<'a> {
    pub id: Uuid,
    pub account_id: Uuid,
    pub seq: i64,
    pub kind: &'a str,
    pub amount_minor: i64,
    pub delta_minor: i64,
    pub currency: &'a str,
    pub balance_after_minor: i64,
    pub request_id: &'a str,
    pub reference: &'a str,
    pub reason: &'a str,
    pub refund_of: Option<Uuid>,
}

pub async fn find_by_request(
    conn: &mut AsyncPgConnection,
    account_id: Uuid,
    request_id: &str,
) -> QueryResult<Option<EntryRow>> {
    ledger_entries::table
        .filter(ledger_entries::account_id.eq(account_id))
        .filter(ledger_entries::request_id.eq(request_id))
        .select(EntryRow::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<EntryRow>> {
    ledger_entries::table
        .find(id)
        .select(EntryRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The amounts of the refunds of debit `debit_id`.
pub async fn refund_amounts(conn: &mut AsyncPgConnection, debit_id: Uuid) -> QueryResult<Vec<i64>> {
    ledger_entries::table
        .filter(ledger_entries::refund_of.eq(debit_id))
        .select(ledger_entries::amount_minor)
        .load(conn)
        .await
}

/// An account's balance and sequence moved to a new ledger entry.
#[derive(AsChangeset)]
#[diesel(table_name = accounts)]
struct BalanceMove {
    balance_minor: i64,
    ledger_seq: i64,
}

/// Appends the entry and moves the account's balance to it, in the
/// caller's transaction (which must hold the account's lock).
pub async fn append(conn: &mut AsyncPgConnection, entry: NewEntry<'_>) -> QueryResult<EntryRow> {
    let row = diesel::insert_into(ledger_entries::table)
        .values(&entry)
        .returning(EntryRow::as_returning())
        .get_result(conn)
        .await?;
    diesel::update(accounts::table.find(entry.account_id))
        .set((
            BalanceMove {
                balance_minor: entry.balance_after_minor,
                ledger_seq: entry.seq,
            },
            accounts::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(row)
}

/// An account's entries, newest first, before the `before` seq.
pub async fn entries(
    conn: &mut AsyncPgConnection,
    account_id: Uuid,
    before: Option<i64>,
    limit: i64,
) -> QueryResult<Vec<EntryRow>> {
    let mut query = ledger_entries::table
        .filter(ledger_entries::account_id.eq(account_id))
        .select(EntryRow::as_select())
        .order(ledger_entries::seq.desc())
        .limit(limit)
        .into_boxed();
    if let Some(before) = before {
        query = query.filter(ledger_entries::seq.lt(before));
    }
    query.load(conn).await
}

/// One account whose ledger and balance disagree.
#[derive(Debug, Clone, PartialEq, Eq, diesel::QueryableByName)]
pub struct LedgerMismatch {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub account_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub balance_minor: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub ledger_sum_minor: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub ledger_seq: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub entry_count: i64,
}

/// Every account whose balance is not the sum of its ledger, or whose entry
/// count is not its sequence; empty when all is well.
pub async fn mismatches(conn: &mut AsyncPgConnection) -> QueryResult<Vec<LedgerMismatch>> {
    diesel::sql_query(
        "SELECT a.id AS account_id, a.balance_minor, \
                COALESCE(SUM(e.delta_minor), 0)::int8 AS ledger_sum_minor, \
                a.ledger_seq, COUNT(e.id)::int8 AS entry_count \
         FROM accounts a LEFT JOIN ledger_entries e ON e.account_id = a.id \
         GROUP BY a.id \
         HAVING a.balance_minor <> COALESCE(SUM(e.delta_minor), 0) OR a.ledger_seq <> COUNT(e.id) \
         ORDER BY a.id",
    )
    .load(conn)
    .await
}

/// A debit made under a caller's key, and what its refunds gave back.
#[derive(Debug, Clone, PartialEq, Eq, diesel::QueryableByName)]
pub struct KeyedDebit {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub account_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub request_id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub amount_minor: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub refunded_minor: i64,
}

/// Every debit whose request id starts with `prefix` (matched literally).
pub async fn debits_by_key_prefix(conn: &mut AsyncPgConnection, prefix: &str) -> QueryResult<Vec<KeyedDebit>> {
    diesel::sql_query(
        "SELECT d.id, d.account_id, d.request_id, d.amount_minor, \
                COALESCE((SELECT SUM(r.amount_minor) FROM ledger_entries r WHERE r.refund_of = d.id), 0)::int8 \
                    AS refunded_minor \
         FROM ledger_entries d \
         WHERE d.kind = 'debit' AND starts_with(d.request_id, $1) \
         ORDER BY d.id",
    )
    .bind::<diesel::sql_types::Text, _>(prefix)
    .load(conn)
    .await
}
