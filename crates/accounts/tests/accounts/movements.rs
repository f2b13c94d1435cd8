//! Balance movements over gRPC: who may deposit, debit and refund, what makes
//! a movement invalid, idempotency by request id, reading the balance and the
//! ledger, and the BalanceChanged event each movement commits with.

use keel_testkit::status::{reason, violated_fields};
use std::collections::HashSet;

use diesel::{ExpressionMethods as _, QueryDsl as _};
use diesel_async::RunQueryDsl as _;
use keel::{
    accounts::v1 as pb,
    common::v1::Money,
    events::v1::{BalanceChanged, Event, event::Payload},
};
use keel_platform::events::outbox::outbox;
use keel_testkit::{Suite, SuiteOptions, authorized, spawn_suite_with_options};
use prost::Message as _;
use tonic::{Code, Status};
use uuid::Uuid;

fn money(amount_minor: i64, currency_code: &str) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency_code: currency_code.into(),
    })
}

fn usd(amount_minor: i64) -> Option<Money> {
    money(amount_minor, "USD")
}

fn minor(money: Option<&Money>) -> Option<i64> {
    money.map(|m| m.amount_minor)
}

/// A running suite with one user (whose account exists) and one admin.
struct Fixture {
    suite: Suite,
    account_id: String,
    user: String,
    admin: String,
}

async fn fixture() -> anyhow::Result<Fixture> {
    // Notifications (BalanceChanged's consumer) stays down, so the events
    // stay in the outbox, payloads and all, for the tests to read.
    let suite = spawn_suite_with_options(SuiteOptions::default().withhold("notifications")).await?;
    let (user, tokens) = suite.signed_in_user().await?;
    // First access creates the account, whether or not UserRegistered arrived.
    balance(&suite, &tokens.access_token, "me").await?;
    let (_, admin) = suite.signed_in_admin().await?;
    Ok(Fixture {
        suite,
        account_id: user.id,
        user: tokens.access_token,
        admin: admin.access_token,
    })
}

/// A movement request: the account, the amount and the idempotency key.
#[derive(Debug, Clone)]
struct Movement {
    account_id: String,
    amount: Option<Money>,
    request_id: String,
    reference: String,
    /// For a refund: the debit it gives back.
    debit: String,
}

impl Movement {
    /// A well-formed refund of a debit nobody made.
    fn refund_of_some_debit(account_id: &str, request_id: &str) -> Self {
        Movement {
            debit: uuid::Uuid::now_v7().to_string(),
            ..Movement::new(account_id, usd(100), request_id)
        }
    }

    fn new(account_id: &str, amount: Option<Money>, request_id: &str) -> Self {
        Movement {
            account_id: account_id.into(),
            amount,
            request_id: request_id.into(),
            reference: String::new(),
            debit: String::new(),
        }
    }

    /// A refund of debit `debit`.
    fn refunding(account_id: &str, amount: Option<Money>, request_id: &str, debit: &str) -> Self {
        Movement {
            debit: debit.into(),
            ..Movement::new(account_id, amount, request_id)
        }
    }
}

async fn deposit(suite: &Suite, token: &str, m: Movement) -> Result<pb::Transaction, Status> {
    let request = pb::DepositRequest {
        account_id: m.account_id,
        amount: m.amount,
        request_id: m.request_id,
        reference: m.reference,
        reason: "top-up".into(),
    };
    let response = suite.accounts().deposit(authorized(request, token)).await?;
    Ok(response.into_inner().transaction.unwrap_or_default())
}

async fn debit(suite: &Suite, token: &str, m: Movement) -> Result<pb::Transaction, Status> {
    let request = pb::DebitRequest {
        account_id: m.account_id,
        amount: m.amount,
        request_id: m.request_id,
        reference: m.reference,
        reason: "purchase".into(),
    };
    let response = suite.accounts().debit(authorized(request, token)).await?;
    Ok(response.into_inner().transaction.unwrap_or_default())
}

async fn refund(suite: &Suite, token: &str, m: Movement) -> Result<pb::Transaction, Status> {
    let request = pb::RefundRequest {
        account_id: m.account_id,
        amount: m.amount,
        request_id: m.request_id,
        reference: m.reference,
        reason: "cancelled".into(),
        debit_transaction_id: m.debit,
    };
    let response = suite.accounts().refund(authorized(request, token)).await?;
    Ok(response.into_inner().transaction.unwrap_or_default())
}

async fn get_balance(suite: &Suite, token: &str, account_id: &str) -> Result<pb::Balance, Status> {
    let request = pb::GetBalanceRequest {
        account_id: account_id.into(),
    };
    let response = suite.accounts().get_balance(authorized(request, token)).await?;
    Ok(response.into_inner().balance.unwrap_or_default())
}

async fn balance(suite: &Suite, token: &str, account_id: &str) -> Result<i64, Status> {
    let balance = get_balance(suite, token, account_id).await?;
    Ok(minor(balance.balance.as_ref()).unwrap_or_default())
}

async fn list_transactions(
    suite: &Suite,
    token: &str,
    account_id: &str,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListTransactionsResponse, Status> {
    let request = pb::ListTransactionsRequest {
        account_id: account_id.into(),
        page_size,
        page_token: page_token.into(),
    };
    let response = suite.accounts().list_transactions(authorized(request, token)).await?;
    Ok(response.into_inner())
}

/// The whole ledger of an account, newest first (one page of 100).
async fn ledger(suite: &Suite, token: &str, account_id: &str) -> anyhow::Result<Vec<pb::Transaction>> {
    let page = list_transactions(suite, token, account_id, 100, "").await?;
    anyhow::ensure!(page.next_page_token.is_empty(), "more than one page");
    Ok(page.transactions)
}

/// Every BalanceChanged event in accounts' outbox, oldest first.
async fn balance_events(suite: &Suite) -> anyhow::Result<Vec<BalanceChanged>> {
    let mut conn = suite.accounts_db().await?;
    let payloads: Vec<Vec<u8>> = outbox::table
        .filter(outbox::event_type.eq("balance.changed"))
        .order(outbox::id.asc())
        .select(outbox::payload)
        .load(&mut conn)
        .await?;
    payloads
        .iter()
        .map(|payload| match Event::decode(payload.as_slice())?.payload {
            Some(Payload::BalanceChanged(changed)) => Ok(changed),
            other => anyhow::bail!("a balance.changed row holds {other:?}"),
        })
        .collect()
}

/// The ledger of every account sums to its balance.
async fn assert_ledger_consistent(suite: &Suite) -> anyhow::Result<()> {
    let (checked, mismatches) = keel_accounts::verify_ledger(suite.accounts_database_url()).await?;
    assert!(checked >= 1, "no account was checked");
    assert!(mismatches.is_empty(), "{mismatches:?}");
    Ok(())
}

fn assert_refused(status: &Status, code: Code, expected_reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason(status), expected_reason, "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_deposit_returns_the_transaction() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let mut movement = Movement::new(&fx.account_id, usd(1_250), "deposit-1");
    movement.reference = "payment-77".into();

    let transaction = deposit(&fx.suite, &fx.admin, movement).await?;
    assert!(Uuid::parse_str(&transaction.id).is_ok());
    assert_eq!(transaction.account_id, fx.account_id);
    assert_eq!(transaction.kind(), pb::TransactionKind::Deposit);
    assert_eq!(transaction.amount, usd(1_250));
    assert_eq!(transaction.balance_after, usd(1_250));
    assert_eq!(transaction.request_id, "deposit-1");
    assert_eq!(transaction.reference, "payment-77");
    assert_eq!(transaction.reason, "top-up");
    assert!(transaction.create_time.is_some());
    assert_eq!(balance(&fx.suite, &fx.user, "me").await?, 1_250);
    assert_ledger_consistent(&fx.suite).await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_cannot_deposit_even_to_their_own_account() -> anyhow::Result<()> {
    let fx = fixture().await?;

    let status = deposit(&fx.suite, &fx.user, Movement::new(&fx.account_id, usd(100), "mine"))
        .await
        .expect_err("users do not mint money");
    assert_refused(&status, Code::PermissionDenied, "DEPOSIT_NOT_ALLOWED");
    assert_eq!(balance(&fx.suite, &fx.user, "me").await?, 0);
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn movements_without_a_token_are_unauthenticated() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let mut accounts = fx.suite.accounts();

    let status = accounts
        .deposit(pb::DepositRequest {
            account_id: fx.account_id.clone(),
            amount: usd(100),
            request_id: "anonymous".into(),
            ..Default::default()
        })
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = accounts
        .debit(pb::DebitRequest {
            account_id: fx.account_id.clone(),
            amount: usd(100),
            request_id: "anonymous".into(),
            ..Default::default()
        })
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_with_the_deposit_scope_can_deposit() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let token = fx.suite.service_token(&["accounts.deposit"]).await?;

    let transaction = deposit(&fx.suite, &token, Movement::new(&fx.account_id, usd(300), "payment-1")).await?;
    assert_eq!(transaction.kind(), pb::TransactionKind::Deposit);
    assert_eq!(balance(&fx.suite, &fx.user, "me").await?, 300);
    assert_ledger_consistent(&fx.suite).await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_without_the_deposit_scope_cannot_deposit() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let token = fx.suite.service_token(&["accounts.debit", "accounts.refund"]).await?;

    let status = deposit(&fx.suite, &token, Movement::new(&fx.account_id, usd(300), "payment-1"))
        .await
        .expect_err("no accounts.deposit scope");
    assert_refused(&status, Code::PermissionDenied, "DEPOSIT_NOT_ALLOWED");
    assert_eq!(balance(&fx.suite, &fx.user, "me").await?, 0);
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn user_and_admin_tokens_cannot_debit_or_refund() -> anyhow::Result<()> {
    let fx = fixture().await?;
    deposit(&fx.suite, &fx.admin, Movement::new(&fx.account_id, usd(1_000), "fund")).await?;

    for token in [&fx.user, &fx.admin] {
        let status = debit(&fx.suite, token, Movement::new(&fx.account_id, usd(100), "debit"))
            .await
            .expect_err("debit is for services");
        assert_refused(&status, Code::PermissionDenied, "SCOPE_REQUIRED");
        // Well formed, so only the token is wrong.
        let status = refund(
            &fx.suite,
            token,
            Movement::refund_of_some_debit(&fx.account_id, "refund"),
        )
        .await
        .expect_err("refund is for services");
        assert_refused(&status, Code::PermissionDenied, "SCOPE_REQUIRED");
    }
    assert_eq!(balance(&fx.suite, &fx.user, "me").await?, 1_000);
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn debit_needs_the_debit_scope() -> anyhow::Result<()> {
    let fx = fixture().await?;
    deposit(&fx.suite, &fx.admin, Movement::new(&fx.account_id, usd(1_000), "fund")).await?;
    let token = fx.suite.service_token(&["accounts.refund"]).await?;

    let status = debit(&fx.suite, &token, Movement::new(&fx.account_id, usd(100), "debit"))
        .await
        .expect_err("no accounts.debit scope");
    assert_refused(&status, Code::PermissionDenied, "SCOPE_REQUIRED");
    assert_eq!(balance(&fx.suite, &fx.user, "me").await?, 1_000);
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn refund_needs_the_refund_scope() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let token = fx.suite.service_token(&["accounts.debit"]).await?;

    let status = refund(
        &fx.suite,
        &token,
        Movement::refund_of_some_debit(&fx.account_id, "refund"),
    )
    .await
    .expect_err("no accounts.refund scope");
    assert_refused(&status, Code::PermissionDenied, "SCOPE_REQUIRED");
    assert_eq!(balance(&fx.suite, &fx.user, "me").await?, 0);
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_debit_with_the_debit_scope_lowers_the_balance() -> anyhow::Result<()> {
    let fx = fixture().await?;
    deposit(&fx.suite, &fx.admin, Movement::new(&fx.account_id, usd(1_000), "fund")).await?;
    let token = fx.suite.service_token(&["accounts.debit"]).await?;

    let transaction = debit(&fx.suite, &token, Movement::new(&fx.account_id, usd(400), "order-1")).await?;
    assert_eq!(transaction.kind(), pb::TransactionKind::Debit);
    assert_eq!(
        transaction.amount,
        usd(400),
        "amounts are positive; the kind gives the direction"
    );
    assert_eq!(transaction.balance_after, usd(600));
    assert_eq!(balance(&fx.suite, &fx.user, "me").await?, 600);
    assert_ledger_consistent(&fx.suite).await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_with_the_refund_scope_raises_the_balance() -> anyhow::Result<()> {
    let fx = fixture().await?;
    deposit(&fx.suite, &fx.admin, Movement::new(&fx.account_id, usd(1_000), "fund")).await?;
    let debit_token = fx.suite.service_token(&["accounts.debit"]).await?;
    let charged = debit(
        &fx.suite,
        &debit_token,
        Movement::new(&fx.account_id, usd(400), "order-1"),
    )
    .await?;
    let token = fx.suite.service_token(&["accounts.refund"]).await?;

    let transaction = refund(
        &fx.suite,
        &token,
        Movement::refunding(&fx.account_id, usd(250), "refund-1", &charged.id),
    )
    .await?;
    assert_eq!(transaction.kind(), pb::TransactionKind::Refund);
    assert_eq!(transaction.debit_transaction_id, charged.id);
    assert_eq!(transaction.balance_after, usd(850));
    assert_eq!(balance(&fx.suite, &fx.user, "me").await?, 850);
    assert_ledger_consistent(&fx.suite).await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_debit_over_the_balance_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let fx = fixture().await?;
    deposit(&fx.suite, &fx.admin, Movement::new(&fx.account_id, usd(500), "fund")).await?;
    let token = fx.suite.service_token(&["accounts.debit"]).await?;

    let status = debit(&fx.suite, &token, Movement::new(&fx.account_id, usd(501), "too-much"))
        .await
        .expect_err("more than the balance");
    assert_refused(&status, Code::FailedPrecondition, "INSUFFICIENT_FUNDS");
    assert_eq!(balance(&fx.suite, &fx.user, "me").await?, 500);
    assert_eq!(ledger(&fx.suite, &fx.user, "me").await?.len(), 1, "only the deposit");
    assert_eq!(
        balance_events(&fx.suite).await?.len(),
        1,
        "no event for the refused debit"
    );
    assert_ledger_consistent(&fx.suite).await?;

    // A decline is as final as a debit: once funded, the same key is declined
    // again, and only a new key debits.
    deposit(&fx.suite, &fx.admin, Movement::new(&fx.account_id, usd(1), "top-up")).await?;
    let status = debit(&fx.suite, &token, Movement::new(&fx.account_id, usd(501), "too-much"))
        .await
        .expect_err("the first answer stands");
    assert_refused(&status, Code::FailedPrecondition, "INSUFFICIENT_FUNDS");
    assert_eq!(balance(&fx.suite, &fx.user, "me").await?, 501);
    assert_eq!(ledger(&fx.suite, &fx.user, "me").await?.len(), 2, "the deposits only");
    let transaction = debit(&fx.suite, &token, Movement::new(&fx.account_id, usd(501), "once-more")).await?;
    assert_eq!(transaction.balance_after, usd(0));
    assert_ledger_consistent(&fx.suite).await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declined_key_reused_for_another_debit_is_refused() -> anyhow::Result<()> {
    let fx = fixture().await?;
    deposit(&fx.suite, &fx.admin, Movement::new(&fx.account_id, usd(500), "fund")).await?;
    let token = fx.suite.service_token(&["accounts.debit"]).await?;
    let mut first = Movement::new(&fx.account_id, usd(501), "declined");
    first.reference = "order-1".into();
    let status = debit(&fx.suite, &token, first.clone())
        .await
        .expect_err("more than the balance");
    assert_refused(&status, Code::FailedPrecondition, "INSUFFICIENT_FUNDS");

    // Each would fit the balance, but the key was declined for another debit.
    let mut other_amount = first.clone();
    other_amount.amount = usd(400);
    let mut other_reference = first.clone();
    other_reference.reference = "order-2".into();
    for movement in [other_amount, other_reference] {
        let status = debit(&fx.suite, &token, movement)
            .await
            .expect_err("different parameters under the same key");
        assert_refused(&status, Code::AlreadyExists, "REQUEST_ID_REUSED");
    }
    assert_eq!(balance(&fx.suite, &fx.user, "me").await?, 500);
    assert_eq!(ledger(&fx.suite, &fx.user, "me").await?.len(), 1);
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_debit_of_an_unknown_account_stays_declined_once_it_exists() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let token = fx.suite.service_token(&["accounts.debit"]).await?;
    let later = Uuid::now_v7();
    let movement = Movement::new(&later.to_string(), usd(100), "early");

    let status = debit(&fx.suite, &token, movement.clone())
        .await
        .expect_err("no such account");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // The account appears and is funded; the key still answers NOT_FOUND.
    let mut conn = fx.suite.accounts_db().await?;
    keel_accounts::store::accounts::ensure(&mut conn, later, "", "USD").await?;
    deposit(
        &fx.suite,
        &fx.admin,
        Movement::new(&later.to_string(), usd(1_000), "fund"),
    )
    .await?;
    let status = debit(&fx.suite, &token, movement)
        .await
        .expect_err("the first answer stands");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let read = get_balance(&fx.suite, &fx.admin, &later.to_string()).await?;
    assert_eq!(read.balance, usd(1_000));
    assert_ledger_consistent(&fx.suite).await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_movement_in_another_currency_is_refused() -> anyhow::Result<()> {
    let fx = fixture().await?;
    deposit(&fx.suite, &fx.admin, Movement::new(&fx.account_id, usd(500), "fund")).await?;
    let token = fx.suite.service_token(&["accounts.debit"]).await?;

    let status = deposit(
        &fx.suite,
        &fx.admin,
        Movement::new(&fx.account_id, money(100, "EUR"), "euros"),
    )
    .await
    .expect_err("the account holds USD");
    assert_refused(&status, Code::FailedPrecondition, "CURRENCY_MISMATCH");
    let status = debit(
        &fx.suite,
        &token,
        Movement::new(&fx.account_id, money(100, "EUR"), "euros"),
    )
    .await
    .expect_err("the account holds USD");
    assert_refused(&status, Code::FailedPrecondition, "CURRENCY_MISMATCH");
    // The declined debit's key answers the same again.
    let status = debit(
        &fx.suite,
        &token,
        Movement::new(&fx.account_id, money(100, "EUR"), "euros"),
    )
    .await
    .expect_err("the first answer stands");
    assert_refused(&status, Code::FailedPrecondition, "CURRENCY_MISMATCH");
    assert_eq!(balance(&fx.suite, &fx.user, "me").await?, 500);
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_movements_name_the_offending_field() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let id = fx.account_id.as_str();
    let cases = [
        (Movement::new(id, usd(0), "zero"), "amount.amount_minor"),
        (Movement::new(id, usd(-100), "negative"), "amount.amount_minor"),
        (Movement::new(id, None, "missing-amount"), "amount"),
        (
            Movement::new(id, money(100, "usd"), "lowercase"),
            "amount.currency_code",
        ),
        (
            Movement::new(id, money(100, "DOLLARS"), "long-code"),
            "amount.currency_code",
        ),
        (Movement::new(id, usd(100), ""), "request_id"),
        (Movement::new(id, usd(100), "   "), "request_id"),
        (Movement::new(id, usd(100), &"k".repeat(129)), "request_id"),
        (Movement::new("not-a-uuid", usd(100), "bad-id"), "account_id"),
    ];
    for (movement, field) in cases {
        let status = deposit(&fx.suite, &fx.admin, movement.clone())
            .await
            .expect_err("invalid deposit");
        assert_eq!(status.code(), Code::InvalidArgument, "{movement:?}: {status:?}");
        assert_eq!(violated_fields(&status), [field], "{movement:?}");
    }

    // Debit and refund validate the same way.
    let token = fx.suite.service_token(&[]).await?;
    let status = debit(&fx.suite, &token, Movement::new(id, usd(0), "zero"))
        .await
        .expect_err("invalid debit");
    assert_eq!(violated_fields(&status), ["amount.amount_minor"]);
    let status = refund(&fx.suite, &token, Movement::new(id, None, ""))
        .await
        .expect_err("invalid refund");
    assert_eq!(
        violated_fields(&status),
        ["amount", "request_id", "debit_transaction_id"],
        "every violation at once"
    );

    assert_eq!(balance(&fx.suite, &fx.user, "me").await?, 0);
    assert!(balance_events(&fx.suite).await?.is_empty());
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_movement_on_an_unknown_account_is_not_found() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let unknown = Uuid::now_v7().to_string();
    let token = fx.suite.service_token(&[]).await?;

    let status = deposit(&fx.suite, &fx.admin, Movement::new(&unknown, usd(100), "d"))
        .await
        .expect_err("no such account");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = debit(&fx.suite, &token, Movement::new(&unknown, usd(100), "d"))
        .await
        .expect_err("no such account");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let any_debit = Uuid::now_v7().to_string();
    let status = refund(
        &fx.suite,
        &token,
        Movement::refunding(&unknown, usd(100), "r", &any_debit),
    )
    .await
    .expect_err("no such account");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_id_reused_for_another_kind_is_refused() -> anyhow::Result<()> {
    let fx = fixture().await?;
    deposit(&fx.suite, &fx.admin, Movement::new(&fx.account_id, usd(500), "key-1")).await?;
    let token = fx.suite.service_token(&["accounts.refund"]).await?;

    let any_debit = Uuid::now_v7().to_string();
    let status = refund(
        &fx.suite,
        &token,
        Movement::refunding(&fx.account_id, usd(500), "key-1", &any_debit),
    )
    .await
    .expect_err("the key belongs to a deposit");
    assert_refused(&status, Code::AlreadyExists, "REQUEST_ID_REUSED");
    assert_eq!(balance(&fx.suite, &fx.user, "me").await?, 500);
    assert_eq!(ledger(&fx.suite, &fx.user, "me").await?.len(), 1);
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_id_reused_for_another_amount_or_reference_is_refused() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let mut first = Movement::new(&fx.account_id, usd(500), "key-1");
    first.reference = "payment-1".into();
    deposit(&fx.suite, &fx.admin, first.clone()).await?;

    let mut other_amount = first.clone();
    other_amount.amount = usd(501);
    let mut other_reference = first.clone();
    other_reference.reference = "payment-2".into();
    for movement in [other_amount, other_reference] {
        let status = deposit(&fx.suite, &fx.admin, movement.clone())
            .await
            .expect_err("different parameters under the same key");
        assert_refused(&status, Code::AlreadyExists, "REQUEST_ID_REUSED");
    }
    assert_eq!(balance(&fx.suite, &fx.user, "me").await?, 500);
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_deposit_returns_the_first_transaction_and_moves_money_once() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let movement = Movement::new(&fx.account_id, usd(700), "retry-me");

    let first = deposit(&fx.suite, &fx.admin, movement.clone()).await?;
    let again = deposit(&fx.suite, &fx.admin, movement.clone()).await?;
    // Another caller allowed to deposit retrying the same key gets the same.
    let token = fx.suite.service_token(&["accounts.deposit"]).await?;
    let third = deposit(&fx.suite, &token, movement).await?;

    assert_eq!(again, first);
    assert_eq!(third.id, first.id);
    assert_eq!(balance(&fx.suite, &fx.user, "me").await?, 700);
    assert_eq!(ledger(&fx.suite, &fx.user, "me").await?.len(), 1);
    assert_eq!(balance_events(&fx.suite).await?.len(), 1);
    assert_ledger_consistent(&fx.suite).await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_are_scoped_to_the_account() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let (other, other_tokens) = fx.suite.signed_in_user().await?;
    balance(&fx.suite, &other_tokens.access_token, "me").await?;

    let mine = deposit(&fx.suite, &fx.admin, Movement::new(&fx.account_id, usd(100), "shared")).await?;
    let theirs = deposit(&fx.suite, &fx.admin, Movement::new(&other.id, usd(100), "shared")).await?;
    assert_ne!(mine.id, theirs.id);
    assert_eq!(balance(&fx.suite, &other_tokens.access_token, "me").await?, 100);
    assert_ledger_consistent(&fx.suite).await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_owner_and_an_admin_read_the_balance_and_ledger() -> anyhow::Result<()> {
    let fx = fixture().await?;
    deposit(&fx.suite, &fx.admin, Movement::new(&fx.account_id, usd(900), "fund")).await?;

    for (token, account_id) in [
        (&fx.user, "me"),
        (&fx.user, fx.account_id.as_str()),
        (&fx.admin, fx.account_id.as_str()),
    ] {
        let read = get_balance(&fx.suite, token, account_id).await?;
        assert_eq!(read.account_id, fx.account_id);
        assert_eq!(read.balance, usd(900));
        let entries = ledger(&fx.suite, token, account_id).await?;
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].account_id, fx.account_id);
    }
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn another_user_cannot_read_the_balance_or_ledger() -> anyhow::Result<()> {
    let fx = fixture().await?;
    deposit(&fx.suite, &fx.admin, Movement::new(&fx.account_id, usd(900), "fund")).await?;
    let (_, other) = fx.suite.signed_in_user().await?;

    let status = get_balance(&fx.suite, &other.access_token, &fx.account_id)
        .await
        .expect_err("not their account");
    assert_refused(&status, Code::PermissionDenied, "NOT_ACCOUNT_OWNER");
    let status = list_transactions(&fx.suite, &other.access_token, &fx.account_id, 0, "")
        .await
        .expect_err("not their account");
    assert_refused(&status, Code::PermissionDenied, "NOT_ACCOUNT_OWNER");
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_account_has_a_zero_balance_that_never_changed() -> anyhow::Result<()> {
    let fx = fixture().await?;

    let read = get_balance(&fx.suite, &fx.user, "me").await?;
    assert_eq!(read.balance, usd(0), "in the suite's currency");
    assert_eq!(read.update_time, None, "the balance never changed");
    assert!(ledger(&fx.suite, &fx.user, "me").await?.is_empty());
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_balance_update_time_is_the_last_movements() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let transaction = deposit(&fx.suite, &fx.admin, Movement::new(&fx.account_id, usd(900), "fund")).await?;
    assert_eq!(
        get_balance(&fx.suite, &fx.user, "me").await?.update_time,
        transaction.create_time
    );

    // A profile change is not a balance change.
    fx.suite
        .accounts()
        .update_profile(authorized(
            pb::UpdateProfileRequest {
                account: Some(pb::Account {
                    id: "me".into(),
                    display_name: "Renamed".into(),
                    ..Default::default()
                }),
                update_mask: None,
            },
            &fx.user,
        ))
        .await?;
    assert_eq!(
        get_balance(&fx.suite, &fx.user, "me").await?.update_time,
        transaction.create_time
    );
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_are_listed_newest_first_in_pages() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let service = fx.suite.service_token(&[]).await?;
    let id = fx.account_id.as_str();
    deposit(&fx.suite, &fx.admin, Movement::new(id, usd(1_000), "m1")).await?;
    debit(&fx.suite, &service, Movement::new(id, usd(200), "m2")).await?;
    let m3 = debit(&fx.suite, &service, Movement::new(id, usd(300), "m3")).await?;
    refund(&fx.suite, &service, Movement::refunding(id, usd(100), "m4", &m3.id)).await?;
    deposit(&fx.suite, &service, Movement::new(id, usd(50), "m5")).await?;

    let (mut listed, mut pages, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = list_transactions(&fx.suite, &fx.user, "me", 2, &token).await?;
        pages.push(page.transactions.len());
        listed.extend(page.transactions);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        anyhow::ensure!(pages.len() < 10, "pagination does not end");
    }
    assert_eq!(pages, [2, 2, 1]);
    let request_ids: Vec<_> = listed.iter().map(|t| t.request_id.as_str()).collect();
    assert_eq!(request_ids, ["m5", "m4", "m3", "m2", "m1"], "newest first, no gaps");
    assert_eq!(
        listed.iter().map(|t| &t.id).collect::<HashSet<_>>().len(),
        5,
        "no duplicates"
    );

    // Oldest to newest, each balance_after is the running balance.
    let mut running = 0;
    for transaction in listed.iter().rev() {
        let amount = minor(transaction.amount.as_ref()).unwrap_or_default();
        running += match transaction.kind() {
            pb::TransactionKind::Debit => -amount,
            _ => amount,
        };
        assert_eq!(
            minor(transaction.balance_after.as_ref()),
            Some(running),
            "{transaction:?}"
        );
    }
    assert_eq!(running, 650);
    assert_eq!(balance(&fx.suite, &fx.user, "me").await?, running);
    assert_ledger_consistent(&fx.suite).await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn list_transactions_refuses_bad_paging() -> anyhow::Result<()> {
    let fx = fixture().await?;

    let status = list_transactions(&fx.suite, &fx.user, "me", -1, "")
        .await
        .expect_err("negative page size");
    assert_eq!(violated_fields(&status), ["page_size"]);
    let status = list_transactions(&fx.suite, &fx.user, "me", 0, "garbage!")
        .await
        .expect_err("garbage token");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["page_token"]);
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn each_movement_commits_one_balance_changed_event() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let service = fx.suite.service_token(&[]).await?;
    let id = fx.account_id.as_str();
    let funded = deposit(&fx.suite, &fx.admin, Movement::new(id, usd(1_000), "e1")).await?;
    let charged = debit(&fx.suite, &service, Movement::new(id, usd(400), "e2")).await?;
    let refunded = refund(
        &fx.suite,
        &service,
        Movement::refunding(id, usd(150), "e3", &charged.id),
    )
    .await?;
    let transactions = [funded, charged, refunded];
    // A retry commits no second event.
    debit(&fx.suite, &service, Movement::new(id, usd(400), "e2")).await?;

    let events = balance_events(&fx.suite).await?;
    assert_eq!(events.len(), transactions.len());
    let expected = [(1_000, 1_000), (-400, 600), (150, 750)];
    for ((event, transaction), (delta, balance)) in events.iter().zip(&transactions).zip(expected) {
        assert_eq!(event.account_id, fx.account_id);
        assert_eq!(event.transaction_id, transaction.id);
        assert_eq!(event.delta, usd(delta), "signed: negative for debits");
        assert_eq!(event.balance, usd(balance));
        assert_eq!(event.balance, transaction.balance_after);
    }
    assert_ledger_consistent(&fx.suite).await?;
    fx.suite.stop().await
}
