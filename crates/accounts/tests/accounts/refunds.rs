//! Refunds give back a debit, never more: a refund names the debit it
//! returns, on the same account, and the refunds of one debit never add up
//! to more than it, even when they race. VoidDebit closes a debit key for
//! good: it refunds the debit if there was one, and otherwise no Debit with
//! the key ever takes money.

use futures::future::join_all;
use keel::{
    accounts::v1::{self as pb, accounts_service_client::AccountsServiceClient},
    common::v1::Money,
};
use keel_testkit::status::{reason, violated_fields};
use keel_testkit::{Suite, authorized, spawn_suite};
use std::collections::HashSet;
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

async fn debit(
    mut accounts: AccountsServiceClient<Channel>,
    token: String,
    account_id: String,
    request_id: String,
    amount: i64,
) -> Result<pb::Transaction, Status> {
    let response = accounts
        .debit(authorized(
            pb::DebitRequest {
                account_id,
                amount: usd(amount),
                reference: format!("{request_id}-ref"),
                request_id,
                reason: "order".into(),
            },
            &token,
        ))
        .await?;
    Ok(response.into_inner().transaction.unwrap_or_default())
}

async fn void_debit(
    mut accounts: AccountsServiceClient<Channel>,
    token: String,
    account_id: String,
    request_id: String,
) -> Result<pb::VoidDebitResponse, Status> {
    let response = accounts
        .void_debit(authorized(
            pb::VoidDebitRequest {
                account_id,
                refund_request_id: format!("{request_id}:refund"),
                request_id,
                reason: "cancelled".into(),
            },
            &token,
        ))
        .await?;
    Ok(response.into_inner())
}

impl Fixture {
    async fn debit(&self, account: &Account, request_id: &str, amount: i64) -> Result<pb::Transaction, Status> {
        debit(
            self.suite.accounts(),
            self.service.clone(),
            account.id.clone(),
            request_id.to_owned(),
            amount,
        )
        .await
    }

    /// VoidDebit of `request_id`, refunding under `<request_id>:refund`.
    async fn void(&self, account_id: &str, request_id: &str) -> Result<pb::VoidDebitResponse, Status> {
        void_debit(
            self.suite.accounts(),
            self.service.clone(),
            account_id.to_owned(),
            request_id.to_owned(),
        )
        .await
    }

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

fn never_charged() -> pb::VoidDebitResponse {
    pb::VoidDebitResponse {
        outcome: pb::VoidOutcome::NeverCharged.into(),
        debit: None,
        refund: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn voiding_an_unknown_key_means_it_never_debits() -> anyhow::Result<()> {
    let fx = fixture().await?;

    assert_eq!(fx.void(&fx.alice.id, "order-2").await?, never_charged());
    let status = fx
        .debit(&fx.alice, "order-2", 100)
        .await
        .expect_err("the key was voided");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(reason(&status), "DEBIT_VOIDED");
    // Again, it answers the same and still nothing moves.
    assert_eq!(fx.void(&fx.alice.id, "order-2").await?, never_charged());
    assert_eq!(fx.state(&fx.alice).await?, (600, FUNDED.to_vec()));

    // An account that does not exist: the key is voided all the same.
    let nobody = Uuid::now_v7().to_string();
    assert_eq!(fx.void(&nobody, "order-3").await?, never_charged());
    let status = debit(fx.suite.accounts(), fx.service.clone(), nobody, "order-3".into(), 100)
        .await
        .expect_err("the key was voided");
    assert_eq!(reason(&status), "DEBIT_VOIDED", "{status:?}");
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn voiding_a_key_that_debited_refunds_it_once() -> anyhow::Result<()> {
    let fx = fixture().await?;

    let voided = fx.void(&fx.alice.id, "order-1").await?;
    assert_eq!(voided.outcome(), pb::VoidOutcome::Refunded);
    let debit = voided.debit.clone().unwrap_or_default();
    assert_eq!(debit.id, fx.alice.debit);
    let refund = voided.refund.clone().unwrap_or_default();
    assert_eq!(refund.kind(), pb::TransactionKind::Refund);
    assert_eq!(refund.amount, usd(400));
    assert_eq!(refund.debit_transaction_id, fx.alice.debit);
    assert_eq!(refund.request_id, "order-1:refund");
    assert_eq!(refund.reference, debit.reference, "the debit's reference");
    assert_eq!(refund.balance_after, usd(1_000));

    // Called again, it answers the same and refunds nothing more.
    assert_eq!(fx.void(&fx.alice.id, "order-1").await?, voided);
    // A plain Refund of the same debit under the same key replays it too.
    let mut accounts = fx.suite.accounts();
    let replayed = accounts
        .refund(authorized(
            pb::RefundRequest {
                account_id: fx.alice.id.clone(),
                amount: usd(400),
                request_id: "order-1:refund".into(),
                reference: debit.reference.clone(),
                reason: "cancelled".into(),
                debit_transaction_id: fx.alice.debit.clone(),
            },
            &fx.service,
        ))
        .await?
        .into_inner()
        .transaction
        .unwrap_or_default();
    assert_eq!(replayed.id, refund.id);
    let (balance, ledger) = fx.state(&fx.alice).await?;
    assert_eq!(balance, 1_000);
    assert_eq!(ledger[0], (pb::TransactionKind::Refund, 400));
    assert_eq!(ledger.len(), 3);

    // Part of Bob's debit was refunded already: only the rest is.
    fx.refund(&fx.bob, &fx.bob.debit, "part", 150).await?;
    let voided = fx.void(&fx.bob.id, "order-1").await?;
    assert_eq!(voided.refund.and_then(|r| r.amount), usd(250));
    assert_eq!(fx.state(&fx.bob).await?.0, 1_000);
    let status = fx
        .refund(&fx.bob, &fx.bob.debit, "more", 1)
        .await
        .expect_err("the debit is all back");
    assert_eq!(reason(&status), "REFUND_EXCEEDS_DEBIT");
    fx.assert_ledger_consistent().await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn voiding_a_key_with_nothing_left_to_refund_shows_no_refund() -> anyhow::Result<()> {
    let fx = fixture().await?;

    fx.refund(&fx.alice, &fx.alice.debit, "all-of-it", 400).await?;
    let voided = fx.void(&fx.alice.id, "order-1").await?;
    assert_eq!(voided.outcome(), pb::VoidOutcome::Refunded);
    assert_eq!(voided.debit.map(|d| d.id), Some(fx.alice.debit.clone()));
    assert_eq!(voided.refund, None);
    assert_eq!(fx.state(&fx.alice).await?.0, 1_000);
    fx.assert_ledger_consistent().await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn voiding_a_declined_key_leaves_it_declined() -> anyhow::Result<()> {
    let fx = fixture().await?;

    let status = fx.debit(&fx.alice, "big", 10_000).await.expect_err("over the balance");
    assert_eq!(reason(&status), "INSUFFICIENT_FUNDS");
    assert_eq!(fx.void(&fx.alice.id, "big").await?, never_charged());
    // Still the first answer, not DEBIT_VOIDED.
    let status = fx.debit(&fx.alice, "big", 10_000).await.expect_err("declined");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(reason(&status), "INSUFFICIENT_FUNDS");
    assert_eq!(fx.state(&fx.alice).await?, (600, FUNDED.to_vec()));
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn void_debit_needs_the_refund_scope() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let (_, admin) = fx.suite.signed_in_admin().await?;
    let debit_only = fx.suite.service_token(&["accounts.debit"]).await?;

    for token in [&fx.alice.token, &admin.access_token, &debit_only] {
        let status = void_debit(
            fx.suite.accounts(),
            token.clone(),
            fx.alice.id.clone(),
            "order-1".into(),
        )
        .await
        .expect_err("VoidDebit is for services that may refund");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(reason(&status), "SCOPE_REQUIRED");
    }
    // Nothing was refunded, and a fresh key was not voided either.
    assert_eq!(fx.state(&fx.alice).await?, (600, FUNDED.to_vec()));
    let status = void_debit(
        fx.suite.accounts(),
        fx.alice.token.clone(),
        fx.alice.id.clone(),
        "order-2".into(),
    )
    .await
    .expect_err("a user token");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    fx.debit(&fx.alice, "order-2", 100).await?;
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn void_debit_refuses_a_refund_key_equal_to_the_debits() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let mut accounts = fx.suite.accounts();

    let status = accounts
        .void_debit(authorized(
            pb::VoidDebitRequest {
                account_id: fx.alice.id.clone(),
                request_id: "order-1".into(),
                refund_request_id: "order-1".into(),
                reason: String::new(),
            },
            &fx.service,
        ))
        .await
        .expect_err("the refund needs its own key");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["refund_request_id"]);
    // A key that names a refund, not a debit.
    fx.refund(&fx.alice, &fx.alice.debit, "a-refund", 100).await?;
    let status = fx.void(&fx.alice.id, "a-refund").await.expect_err("not a debit's key");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(reason(&status), "REQUEST_ID_REUSED");
    assert_eq!(fx.state(&fx.alice).await?.0, 700);
    fx.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_racing_debit_and_void_never_leave_a_debit_standing() -> anyhow::Result<()> {
    let fx = fixture().await?;

    let keys: Vec<String> = (0..40).map(|i| format!("race-{i}-{}", Uuid::now_v7())).collect();
    let races = keys.iter().map(|key| {
        let debit = tokio::spawn(debit(
            fx.suite.accounts(),
            fx.service.clone(),
            fx.alice.id.clone(),
            key.clone(),
            10,
        ));
        let void = tokio::spawn(void_debit(
            fx.suite.accounts(),
            fx.service.clone(),
            fx.alice.id.clone(),
            key.clone(),
        ));
        async move { (debit.await, void.await) }
    });
    let mut debited = 0;
    let mut refund_ids = HashSet::new();
    for (debit, void) in join_all(races).await {
        let void = void??;
        match debit? {
            // The debit came first: the void refunded it.
            Ok(transaction) => {
                assert_eq!(void.outcome(), pb::VoidOutcome::Refunded, "{void:?}");
                assert_eq!(void.debit.as_ref().map(|d| &d.id), Some(&transaction.id));
                let refund = void.refund.unwrap_or_default();
                assert_eq!(refund.amount, usd(10));
                refund_ids.insert(refund.id);
                debited += 1;
            }
            // The void came first: the debit never happened.
            Err(status) => {
                assert_eq!(reason(&status), "DEBIT_VOIDED", "{status:?}");
                assert_eq!(void, never_charged());
            }
        }
    }
    assert_eq!(refund_ids.len(), debited, "one refund per debit");
    let (balance, ledger) = fx.state(&fx.alice).await?;
    assert_eq!(balance, 600, "every debit that happened is refunded");
    assert_eq!(ledger.len(), FUNDED.len() + 2 * debited);
    fx.assert_ledger_consistent().await?;
    fx.suite.stop().await
}
