//! Refunds give back a debit, never more: a refund names the debit it
//! returns, on the same account, and the refunds of one debit never add up
//! to more than it, even when they race.

use futures::future::join_all;
use keel::{
    accounts::v1::{self as pb, accounts_service_client::AccountsServiceClient},
    common::v1::Money,
};
use keel_testkit::status::{reason, violated_fields};
use keel_testkit::{Suite, authorized, spawn_suite};
use tonic::{Code, Status, transport::Channel};
use uuid::Uuid;

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency_code: "USD".into(),
    })
}

/// A suite with two users' accounts, each funded with 1000 and debited 400
/// (balance 600); a service token that may debit and refund.
struct Fixture {
    suite: Suite,
    service: String,
    alice: Account,
    bob: Account,
}

struct Account {
    id: String,
    token: String,
    /// The id of its 400 debit.
    debit: String,
}

async fn fixture() -> anyhow::Result<Fixture> {
    let suite = spawn_suite().await?;
    let (_, admin) = suite.signed_in_admin().await?;
    let service = suite.service_token(&["accounts.debit", "accounts.refund"]).await?;
    let alice = funded_account(&suite, &admin.access_token, &service).await?;
    let bob = funded_account(&suite, &admin.access_token, &service).await?;
    Ok(Fixture {
        suite,
        service,
        alice,
        bob,
    })
}

async fn funded_account(suite: &Suite, admin: &str, service: &str) -> anyhow::Result<Account> {
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
    accounts
        .deposit(authorized(
            pb::DepositRequest {
                account_id: user.id.clone(),
                amount: usd(1_000),
                request_id: "fund".into(),
                ..Default::default()
            },
            admin,
        ))
        .await?;
    let debit = accounts
        .debit(authorized(
            pb::DebitRequest {
                account_id: user.id.clone(),
                amount: usd(400),
                request_id: "order-1".into(),
                reference: "order-1".into(),
                ..Default::default()
            },
            service,
        ))
        .await?
        .into_inner()
        .transaction
        .unwrap_or_default();
    Ok(Account {
        id: user.id,
        token: tokens.access_token,
        debit: debit.id,
    })
}

async fn refund(
    mut accounts: AccountsServiceClient<Channel>,
    token: String,
    account_id: String,
    debit_transaction_id: String,
    request_id: String,
    amount: i64,
) -> Result<pb::Transaction, Status> {
    let response = accounts
        .refund(authorized(
            pb::RefundRequest {
                account_id,
                amount: usd(amount),
                request_id,
                debit_transaction_id,
                reason: "cancelled".into(),
                ..Default::default()
            },
            &token,
        ))
        .await?;
    Ok(response.into_inner().transaction.unwrap_or_default())
}

impl Fixture {
    async fn refund(
        &self,
        account: &Account,
        debit: &str,
        request_id: &str,
        amount: i64,
    ) -> Result<pb::Transaction, Status> {
        refund(
            self.suite.accounts(),
            self.service.clone(),
            account.id.clone(),
            debit.to_owned(),
            request_id.to_owned(),
            amount,
        )
        .await
    }

    /// The account's balance and its ledger's (kind, amount), newest first.
    async fn state(&self, account: &Account) -> anyhow::Result<(i64, Vec<(pb::TransactionKind, i64)>)> {
        let mut accounts = self.suite.accounts();
        let balance = accounts
            .get_balance(authorized(
                pb::GetBalanceRequest {
                    account_id: "me".into(),
                },
                &account.token,
            ))
            .await?
            .into_inner()
            .balance
            .and_then(|b| b.balance)
            .map(|m| m.amount_minor)
            .unwrap_or_default();
        let ledger = accounts
            .list_transactions(authorized(
                pb::ListTransactionsRequest {
                    account_id: "me".into(),
                    page_size: 100,
                    ..Default::default()
                },
                &account.token,
            ))
            .await?
            .into_inner()
            .transactions
            .iter()
            .map(|t| (t.kind(), t.amount.as_ref().map(|m| m.amount_minor).unwrap_or_default()))
            .collect();
        Ok((balance, ledger))
    }

    async fn assert_ledger_consistent(&self) -> anyhow::Result<()> {
        let (_, mismatches) = keel_accounts::verify_ledger(self.suite.accounts_database_url()).await?;
        assert!(mismatches.is_empty(), "{mismatches:?}");
        Ok(())
    }
}

const FUNDED: [(pb::TransactionKind, i64); 2] =
    [(pb::TransactionKind::Debit, 400), (pb::TransactionKind::Deposit, 1_000)];

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_gives_back_part_of_its_debit() -> anyhow::Result<()> {
    let fx = fixture().await?;

    let transaction = fx.refund(&fx.alice, &fx.alice.debit, "refund-1", 250).await?;
    assert_eq!(transaction.kind(), pb::TransactionKind::Refund);
    assert_eq!(transaction.debit_transaction_id, fx.alice.debit);
    assert_eq!(transaction.balance_after, usd(850));
    // The rest of the debit, and a retry that moves nothing again.
    fx.refund(&fx.alice, &fx.alice.debit, "refund-2", 150).await?;
    let retried = fx.refund(&fx.alice, &fx.alice.debit, "refund-1", 250).await?;
    assert_eq!(retried.id, transaction.id, "idempotent by request_id");
    let (balance, _) = fx.state(&fx.alice).await?;
    assert_eq!(balance, 1_000, "all of the debit is back, no more");
    fx.assert_ledger_consistent().await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_beyond_its_debit_is_refused_and_moves_nothing() -> anyhow::Result<()> {
    let fx = fixture().await?;

    let status = fx
        .refund(&fx.alice, &fx.alice.debit, "too-much", 401)
        .await
        .expect_err("more than the debit took");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(reason(&status), "REFUND_EXCEEDS_DEBIT");
    assert_eq!(fx.state(&fx.alice).await?, (600, FUNDED.to_vec()));

    // Once part of it is refunded, only the rest is left.
    fx.refund(&fx.alice, &fx.alice.debit, "part", 300).await?;
    let status = fx
        .refund(&fx.alice, &fx.alice.debit, "rest-and-more", 101)
        .await
        .expect_err("the rest is 100");
    assert_eq!(reason(&status), "REFUND_EXCEEDS_DEBIT");
    let (balance, ledger) = fx.state(&fx.alice).await?;
    assert_eq!(balance, 900);
    assert_eq!(ledger.len(), 3, "the refund of 300 only");
    fx.assert_ledger_consistent().await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_refunds_of_one_debit_never_exceed_it() -> anyhow::Result<()> {
    let fx = fixture().await?;

    // Each fits in the 400 debit; together they would give back 600.
    let results = join_all((0..2).map(|i| {
        tokio::spawn(refund(
            fx.suite.accounts(),
            fx.service.clone(),
            fx.alice.id.clone(),
            fx.alice.debit.clone(),
            format!("race-{i}"),
            300,
        ))
    }))
    .await;
    let mut refused = 0;
    for result in results {
        match result? {
            Ok(transaction) => assert_eq!(transaction.kind(), pb::TransactionKind::Refund),
            Err(status) => {
                assert_eq!(reason(&status), "REFUND_EXCEEDS_DEBIT", "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 1, "one refund succeeds, the other is refused");
    let (balance, ledger) = fx.state(&fx.alice).await?;
    assert_eq!(balance, 900);
    assert_eq!(ledger.len(), 3);
    fx.assert_ledger_consistent().await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_naming_another_accounts_debit_is_refused() -> anyhow::Result<()> {
    let fx = fixture().await?;

    // Bob's debit, into Alice's account.
    let status = fx
        .refund(&fx.alice, &fx.bob.debit, "not-hers", 100)
        .await
        .expect_err("not a debit of this account");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // And a debit that does not exist answers the same.
    let status = fx
        .refund(&fx.alice, &Uuid::now_v7().to_string(), "no-such-debit", 100)
        .await
        .expect_err("no such debit");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(fx.state(&fx.alice).await?, (600, FUNDED.to_vec()));
    assert_eq!(fx.state(&fx.bob).await?, (600, FUNDED.to_vec()));
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_must_name_a_debit() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let (_, ledger_before) = fx.state(&fx.alice).await?;

    let status = fx
        .refund(&fx.alice, "", "no-debit", 100)
        .await
        .expect_err("a refund names its debit");
    assert_eq!(violated_fields(&status), ["debit_transaction_id"]);

    // A refund of a refund, or of a deposit, is no refund of a debit.
    let first = fx.refund(&fx.alice, &fx.alice.debit, "first", 100).await?;
    let mut accounts = fx.suite.accounts();
    let deposit_id = accounts
        .list_transactions(authorized(
            pb::ListTransactionsRequest {
                account_id: "me".into(),
                page_size: 100,
                ..Default::default()
            },
            &fx.alice.token,
        ))
        .await?
        .into_inner()
        .transactions
        .into_iter()
        .find(|t| t.kind() == pb::TransactionKind::Deposit)
        .map(|t| t.id)
        .unwrap_or_default();
    for (not_a_debit, key) in [(&first.id, "of-a-refund"), (&deposit_id, "of-a-deposit")] {
        let status = fx
            .refund(&fx.alice, not_a_debit, key, 100)
            .await
            .expect_err("not a debit");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(violated_fields(&status), ["debit_transaction_id"]);
    }

    // A retry of a refund must name the same debit.
    let status = fx
        .refund(&fx.alice, &fx.bob.debit, "first", 100)
        .await
        .expect_err("the key belongs to a refund of another debit");
    assert_eq!(reason(&status), "REQUEST_ID_REUSED");
    let (balance, ledger) = fx.state(&fx.alice).await?;
    assert_eq!(balance, 700);
    assert_eq!(ledger.len(), ledger_before.len() + 1);
    fx.suite.stop().await
}
