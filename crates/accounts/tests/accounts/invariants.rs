//! The database itself keeps the ledger honest: even raw SQL that bypasses the
//! service cannot change or remove an entry, move a balance without an entry,
//! append an entry that breaks the chain or overdraws, or refund more than a
//! debit took.

use diesel::{
    result::{DatabaseErrorKind, Error as DieselError},
    sql_types,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use keel::{accounts::v1 as pb, common::v1::Money};
use keel_testkit::{Suite, authorized, spawn_suite};
use uuid::Uuid;

/// A suite with one account whose ledger is: deposit 1000, debit 300
/// (balance 700, two entries).
struct Fixture {
    suite: Suite,
    account_id: Uuid,
    user: String,
}

async fn fixture() -> anyhow::Result<Fixture> {
    let suite = spawn_suite().await?;
    let (user, tokens) = suite.signed_in_user().await?;
    let (_, admin) = suite.signed_in_admin().await?;
    let mut accounts = suite.accounts();
    accounts
        .get_account(authorized(
            pb::GetAccountRequest {
                account_id: "me".into(),
            },
            &tokens.access_token,
        ))
        .await?;
    let usd = |amount_minor| {
        Some(Money {
            amount_minor,
            currency_code: "USD".into(),
        })
    };
    accounts
        .deposit(authorized(
            pb::DepositRequest {
                account_id: user.id.clone(),
                amount: usd(1_000),
                request_id: "fund".into(),
                ..Default::default()
            },
            &admin.access_token,
        ))
        .await?;
    let service = suite.service_token(&["accounts.debit"]).await?;
    accounts
        .debit(authorized(
            pb::DebitRequest {
                account_id: user.id.clone(),
                amount: usd(300),
                request_id: "spend".into(),
                ..Default::default()
            },
            &service,
        ))
        .await?;
    Ok(Fixture {
        suite,
        account_id: Uuid::parse_str(&user.id)?,
        user: tokens.access_token,
    })
}

/// Inserts a ledger entry straight into the table.
async fn insert_entry(
    conn: &mut AsyncPgConnection,
    account_id: Uuid,
    seq: i64,
    kind: &str,
    amount_minor: i64,
    balance_after_minor: i64,
) -> Result<usize, DieselError> {
    let delta_minor = if kind == "debit" { -amount_minor } else { amount_minor };
    diesel::sql_query(
        "INSERT INTO ledger_entries \
             (id, account_id, seq, kind, amount_minor, delta_minor, currency, balance_after_minor, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6, 'USD', $7, $8)",
    )
    .bind::<sql_types::Uuid, _>(Uuid::now_v7())
    .bind::<sql_types::Uuid, _>(account_id)
    .bind::<sql_types::BigInt, _>(seq)
    .bind::<sql_types::Text, _>(kind)
    .bind::<sql_types::BigInt, _>(amount_minor)
    .bind::<sql_types::BigInt, _>(delta_minor)
    .bind::<sql_types::BigInt, _>(balance_after_minor)
    .bind::<sql_types::Text, _>(format!("forged-{seq}"))
    .execute(conn)
    .await
}

/// Inserts a refund entry naming `refund_of` straight into the table.
async fn insert_refund(
    conn: &mut AsyncPgConnection,
    account_id: Uuid,
    seq: i64,
    amount_minor: i64,
    balance_after_minor: i64,
    refund_of: Uuid,
) -> Result<usize, DieselError> {
    diesel::sql_query(
        "INSERT INTO ledger_entries \
             (id, account_id, seq, kind, amount_minor, delta_minor, currency, balance_after_minor, request_id, \
              refund_of) \
         VALUES ($1, $2, $3, 'refund', $4, $4, 'USD', $5, $6, $7)",
    )
    .bind::<sql_types::Uuid, _>(Uuid::now_v7())
    .bind::<sql_types::Uuid, _>(account_id)
    .bind::<sql_types::BigInt, _>(seq)
    .bind::<sql_types::BigInt, _>(amount_minor)
    .bind::<sql_types::BigInt, _>(balance_after_minor)
    .bind::<sql_types::Text, _>(format!("forged-{seq}"))
    .bind::<sql_types::Uuid, _>(refund_of)
    .execute(conn)
    .await
}

/// The id of the account's entry of `kind` (the fixture has one of each).
async fn entry_id(conn: &mut AsyncPgConnection, account_id: Uuid, kind: &str) -> anyhow::Result<Uuid> {
    use diesel::{ExpressionMethods as _, QueryDsl as _};
    use keel_accounts::schema::ledger_entries;
    Ok(ledger_entries::table
        .filter(ledger_entries::account_id.eq(account_id))
        .filter(ledger_entries::kind.eq(kind))
        .select(ledger_entries::id)
        .first(conn)
        .await?)
}

/// The database refused the statement with a message containing `expected`.
fn assert_refused(result: Result<usize, DieselError>, expected: &str) {
    match result {
        Err(DieselError::DatabaseError(_, info)) => {
            assert!(
                info.message().contains(expected),
                "refused for another reason: {}",
                info.message()
            );
        }
        other => panic!("the database allowed it: {other:?}"),
    }
}

/// Nothing changed: the balance is still 700 over two entries, and the
/// ledger sums to every balance.
async fn assert_ledger_intact(fx: &Fixture) -> anyhow::Result<()> {
    let (checked, mismatches) = keel_accounts::verify_ledger(fx.suite.accounts_database_url()).await?;
    assert!(checked >= 1, "no account was checked");
    assert!(mismatches.is_empty(), "{mismatches:?}");
    let mut accounts = fx.suite.accounts();
    let balance = accounts
        .get_balance(authorized(
            pb::GetBalanceRequest {
                account_id: "me".into(),
            },
            &fx.user,
        ))
        .await?
        .into_inner()
        .balance
        .and_then(|b| b.balance)
        .map(|m| m.amount_minor);
    assert_eq!(balance, Some(700));
    let entries = accounts
        .list_transactions(authorized(
            pb::ListTransactionsRequest {
                account_id: "me".into(),
                ..Default::default()
            },
            &fx.user,
        ))
        .await?
        .into_inner()
        .transactions;
    let amounts: Vec<_> = entries
        .iter()
        .map(|t| t.amount.as_ref().map(|m| m.amount_minor))
        .collect();
    assert_eq!(amounts, [Some(300), Some(1_000)], "the same two entries, unchanged");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ledger_entries_cannot_be_updated() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let mut conn = fx.suite.accounts_db().await?;

    let result = diesel::sql_query("UPDATE ledger_entries SET reason = 'rewritten' WHERE account_id = $1")
        .bind::<sql_types::Uuid, _>(fx.account_id)
        .execute(&mut conn)
        .await;
    assert_refused(result, "append-only");
    let result = diesel::sql_query(
        "UPDATE ledger_entries SET amount_minor = 1, delta_minor = -1, balance_after_minor = 999 \
         WHERE account_id = $1 AND kind = 'debit'",
    )
    .bind::<sql_types::Uuid, _>(fx.account_id)
    .execute(&mut conn)
    .await;
    assert_refused(result, "append-only");
    assert_ledger_intact(&fx).await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn ledger_entries_cannot_be_deleted() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let mut conn = fx.suite.accounts_db().await?;

    let result = diesel::sql_query("DELETE FROM ledger_entries").execute(&mut conn).await;
    assert_refused(result, "append-only");
    assert_ledger_intact(&fx).await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn ledger_entries_cannot_be_truncated() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let mut conn = fx.suite.accounts_db().await?;

    let result = diesel::sql_query("TRUNCATE ledger_entries CASCADE")
        .execute(&mut conn)
        .await;
    assert_refused(result, "append-only");
    assert_ledger_intact(&fx).await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entry_that_never_reaches_the_balance_is_refused_at_commit() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let mut conn = fx.suite.accounts_db().await?;

    // Continues the chain correctly (seq 3, 700 + 50), but the account's
    // balance is left behind.
    let result = insert_entry(&mut conn, fx.account_id, 3, "deposit", 50, 750).await;
    assert_refused(result, "was not applied to its balance");
    assert_ledger_intact(&fx).await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_balance_cannot_move_without_a_ledger_entry() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let mut conn = fx.suite.accounts_db().await?;

    let result = diesel::sql_query("UPDATE accounts SET balance_minor = balance_minor + 100 WHERE id = $1")
        .bind::<sql_types::Uuid, _>(fx.account_id)
        .execute(&mut conn)
        .await;
    assert_refused(result, "must equal its newest ledger entry");
    // Nor by pointing the account back at an older entry.
    let result = diesel::sql_query("UPDATE accounts SET balance_minor = 1000, ledger_seq = 1 WHERE id = $1")
        .bind::<sql_types::Uuid, _>(fx.account_id)
        .execute(&mut conn)
        .await;
    assert_refused(result, "must equal its newest ledger entry");
    assert_ledger_intact(&fx).await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entry_that_does_not_add_up_is_refused() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let mut conn = fx.suite.accounts_db().await?;

    // 700 + 100 is not 5000.
    let result = insert_entry(&mut conn, fx.account_id, 3, "deposit", 100, 5_000).await;
    assert_refused(result, "does not add up");
    // Nor may an entry skip a place in the chain.
    let result = insert_entry(&mut conn, fx.account_id, 5, "deposit", 100, 800).await;
    assert_refused(result, "has no predecessor");
    assert_ledger_intact(&fx).await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entry_that_overdraws_is_refused() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let mut conn = fx.suite.accounts_db().await?;

    // 700 - 800 adds up to -100, which no balance may be.
    let result = insert_entry(&mut conn, fx.account_id, 3, "debit", 800, -100).await;
    assert!(
        matches!(
            result,
            Err(DieselError::DatabaseError(DatabaseErrorKind::CheckViolation, _))
        ),
        "{result:?}"
    );
    assert_ledger_intact(&fx).await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_account_cannot_start_with_money() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let mut conn = fx.suite.accounts_db().await?;

    let result = diesel::sql_query("INSERT INTO accounts (id, currency, balance_minor) VALUES ($1, 'USD', 1000000)")
        .bind::<sql_types::Uuid, _>(Uuid::now_v7())
        .execute(&mut conn)
        .await;
    assert_refused(result, "starts with a zero balance");
    assert_ledger_intact(&fx).await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_beyond_its_debit_is_refused() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let mut conn = fx.suite.accounts_db().await?;
    let debit = entry_id(&mut conn, fx.account_id, "debit").await?;
    let deposit = entry_id(&mut conn, fx.account_id, "deposit").await?;

    // The debit took 300: 301 back would create a unit of money.
    let result = insert_refund(&mut conn, fx.account_id, 3, 301, 1_001, debit).await;
    assert_refused(result, "would exceed its amount");
    // A refund must name a debit, of its own account...
    let result = insert_refund(&mut conn, fx.account_id, 3, 100, 800, deposit).await;
    assert_refused(result, "must name a debit");
    let result = insert_refund(&mut conn, fx.account_id, 3, 100, 800, Uuid::now_v7()).await;
    assert_refused(result, "must name a debit");
    // ...and must name one at all.
    let result = insert_entry(&mut conn, fx.account_id, 3, "refund", 100, 800).await;
    assert!(
        matches!(
            result,
            Err(DieselError::DatabaseError(DatabaseErrorKind::CheckViolation, _))
        ),
        "{result:?}"
    );
    assert_ledger_intact(&fx).await?;
    fx.suite.stop().await
}
