//! Accounts' queries.

use chrono::{DateTime, Utc};
use diesel::{
    ExpressionMethods as _, Insertable, OptionalExtension as _, QueryDsl as _, Queryable, Selectable,
    SelectableHelper as _, result::Error as DieselError,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::{
    domain::DebitKeyState,
    schema::{accounts, closed_debit_keys, ledger_entries},
};

type QueryResult<T> = Result<T, DieselError>;

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

/// Creates the account unless it exists; fills in a missing email. Returns
/// the account either way.
pub async fn ensure_account(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    email: &str,
    currency: &str,
) -> QueryResult<AccountRow> {
    diesel::insert_into(accounts::table)
        .values((
            accounts::id.eq(id),
            accounts::email.eq(email),
            accounts::currency.eq(currency),
        ))
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

pub async fn find_account(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<AccountRow>> {
    accounts::table
        .find(id)
        .select(AccountRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The account, locked until the transaction ends: every movement of one
/// account goes through this lock, one at a time.
pub async fn lock_account(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<AccountRow>> {
    accounts::table
        .find(id)
        .select(AccountRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

pub async fn list_accounts(
    conn: &mut AsyncPgConnection,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<AccountRow>> {
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

pub async fn find_entry_by_request(
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

pub async fn find_entry(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<EntryRow>> {
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

/// What a new ledger entry needs.
#[derive(Debug)]
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

/// Appends the entry and moves the account's balance to it, in the
/// caller's transaction (which must hold the account's lock).
pub async fn append_entry(conn: &mut AsyncPgConnection, entry: NewEntry<'_>) -> QueryResult<EntryRow> {
    let row = diesel::insert_into(ledger_entries::table)
        .values((
            ledger_entries::id.eq(entry.id),
            ledger_entries::account_id.eq(entry.account_id),
            ledger_entries::seq.eq(entry.seq),
            ledger_entries::kind.eq(entry.kind),
            ledger_entries::amount_minor.eq(entry.amount_minor),
            ledger_entries::delta_minor.eq(entry.delta_minor),
            ledger_entries::currency.eq(entry.currency),
            ledger_entries::balance_after_minor.eq(entry.balance_after_minor),
            ledger_entries::request_id.eq(entry.request_id),
            ledger_entries::reference.eq(entry.reference),
            ledger_entries::reason.eq(entry.reason),
            ledger_entries::refund_of.eq(entry.refund_of),
        ))
        .returning(EntryRow::as_returning())
        .get_result(conn)
        .await?;
    diesel::update(accounts::table.find(entry.account_id))
        .set((
            accounts::balance_minor.eq(entry.balance_after_minor),
            accounts::ledger_seq.eq(entry.seq),
            accounts::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(row)
}

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
pub async fn lock_debit_key(conn: &mut AsyncPgConnection, account_id: Uuid, request_id: &str) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind::<diesel::sql_types::Text, _>(format!("accounts.debit_key:{account_id}:{request_id}"))
        .execute(conn)
        .await
        .map(drop)
}

pub async fn find_closed_key(
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
pub async fn close_debit_key(conn: &mut AsyncPgConnection, key: NewClosedKey<'_>) -> QueryResult<ClosedKeyRow> {
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
pub async fn ledger_mismatches(conn: &mut AsyncPgConnection) -> QueryResult<Vec<LedgerMismatch>> {
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

/// How many accounts there are.
pub async fn account_count(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    accounts::table.count().get_result(conn).await
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
