//! The ledger under concurrency: the balance never goes negative, the ledger
//! sums to the balance, and a request id applies once.

use futures::future::join_all;
use keel::{
    accounts::v1::{self as pb, accounts_service_client::AccountsServiceClient},
    common::v1::Money,
};
use keel_testkit::{Suite, authorized, spawn_suite};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt as _;

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency_code: "USD".into(),
    })
}

/// A registered user's account id, with `deposit` minor units on it.
async fn funded_account(suite: &Suite, deposit: i64) -> anyhow::Result<String> {
    let (user, tokens) = suite.signed_in_user().await?;
    let mut accounts = suite.accounts();
    // First access creates the account even before UserRegistered arrives.
    accounts
        .get_account(authorized(
            pb::GetAccountRequest {
                account_id: "me".into(),
            },
            &tokens.access_token,
        ))
        .await?;
    let (_, admin) = suite.signed_in_admin().await?;
    accounts
        .deposit(authorized(
            pb::DepositRequest {
                account_id: user.id.clone(),
                amount: usd(deposit),
                request_id: format!("fund-{}", user.id),
                ..Default::default()
            },
            &admin.access_token,
        ))
        .await?;
    Ok(user.id)
}

async fn debit(
    mut accounts: AccountsServiceClient<Channel>,
    token: String,
    account_id: String,
    request_id: String,
    amount: i64,
) -> Result<pb::Transaction, tonic::Status> {
    let response = accounts
        .debit(authorized(
            pb::DebitRequest {
                account_id,
                amount: usd(amount),
                request_id,
                ..Default::default()
            },
            &token,
        ))
        .await?;
    Ok(response.into_inner().transaction.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_concurrent_debits_never_overdraw() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let account_id = funded_account(&suite, 4_000).await?;
    let token = suite.service_token(&["accounts.debit"]).await?;

    let results = join_all((0..64).map(|i| {
        tokio::spawn(debit(
            suite.accounts(),
            token.clone(),
            account_id.clone(),
            format!("debit-{i}"),
            100,
        ))
    }))
    .await;
    let (mut ok, mut refused) = (0, 0);
    for result in results {
        match result? {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert_eq!(
                    status.get_details_error_info().map(|i| i.reason).as_deref(),
                    Some("INSUFFICIENT_FUNDS")
                );
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (40, 24));

    let (_, admin) = suite.signed_in_admin().await?;
    let balance = suite
        .accounts()
        .get_balance(authorized(
            pb::GetBalanceRequest {
                account_id: account_id.clone(),
            },
            &admin.access_token,
        ))
        .await?
        .into_inner()
        .balance
        .and_then(|b| b.balance)
        .map(|m| m.amount_minor);
    assert_eq!(balance, Some(0));
    let (checked, mismatches) = keel_accounts::verify_ledger(suite.accounts_database_url()).await?;
    assert!(checked >= 1);
    assert!(mismatches.is_empty(), "{mismatches:?}");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn one_request_id_sent_ten_times_at_once_applies_once() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let account_id = funded_account(&suite, 1_000).await?;
    let token = suite.service_token(&["accounts.debit"]).await?;

    let results = join_all((0..10).map(|_| {
        tokio::spawn(debit(
            suite.accounts(),
            token.clone(),
            account_id.clone(),
            "same-key".into(),
            250,
        ))
    }))
    .await;
    let mut ids = Vec::new();
    for result in results {
        ids.push(result??.id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every retry returns the first result");

    let (_, admin) = suite.signed_in_admin().await?;
    let transactions = suite
        .accounts()
        .list_transactions(authorized(
            pb::ListTransactionsRequest {
                account_id: account_id.clone(),
                ..Default::default()
            },
            &admin.access_token,
        ))
        .await?
        .into_inner()
        .transactions;
    assert_eq!(transactions.len(), 2, "the deposit and one debit");
    assert_eq!(
        transactions[0].balance_after.as_ref().map(|m| m.amount_minor),
        Some(750)
    );

    // The same key for a different amount is refused, not applied.
    let reused = debit(suite.accounts(), token, account_id, "same-key".into(), 100)
        .await
        .expect_err("a different amount under the same key");
    assert_eq!(reused.code(), Code::AlreadyExists);
    assert_eq!(
        reused.get_details_error_info().map(|i| i.reason).as_deref(),
        Some("REQUEST_ID_REUSED")
    );
    suite.stop().await
}
