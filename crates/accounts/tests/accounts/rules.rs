//! The request rules accounts' protos declare (buf.validate), each broken
//! once over gRPC: INVALID_ARGUMENT with the field and the rule, before any
//! handler runs.

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use keel::{accounts::v1 as pb, common::v1::Money};
use keel_testkit::{authorized, status::assert_rule};

const UUID: &str = "0190b6a4-0000-7000-8000-000000000000";

fn deposit(amount: Option<Money>, request_id: &str, reason: &str) -> pb::DepositRequest {
    pb::DepositRequest {
        account_id: UUID.into(),
        amount,
        request_id: request_id.into(),
        reference: String::new(),
        reason: reason.into(),
    }
}

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency_code: "USD".into(),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rule_is_enforced_with_its_field_and_rule() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, admin) = suite.signed_in_admin().await?;
    let token = admin.access_token.as_str();
    let mut accounts = suite.accounts();

    let cases: Vec<(&str, Result<(), tonic::Status>, &str, &str)> = vec![
        (
            "get: neither me nor a UUID",
            accounts
                .get_account(authorized(pb::GetAccountRequest { account_id: "x".into() }, token))
                .await
                .map(drop),
            "account_id",
            "string.pattern",
        ),
        (
            "list: a negative page size",
            accounts
                .list_accounts(authorized(
                    pb::ListAccountsRequest {
                        page_size: -1,
                        page_token: String::new(),
                    },
                    token,
                ))
                .await
                .map(drop),
            "page_size",
            "int32.gte",
        ),
        (
            "update: no account",
            accounts
                .update_profile(authorized(
                    pb::UpdateProfileRequest {
                        account: None,
                        update_mask: None,
                    },
                    token,
                ))
                .await
                .map(drop),
            "account",
            "required",
        ),
        (
            "update profile: a control character in the name",
            accounts
                .update_profile(authorized(
                    pb::UpdateProfileRequest {
                        account: Some(pb::Account {
                            id: "me".into(),
                            display_name: "Ada\u{7}".into(),
                            ..Default::default()
                        }),
                        update_mask: None,
                    },
                    token,
                ))
                .await
                .map(drop),
            "account.display_name",
            "string.pattern",
        ),
        (
            "deposit: no amount",
            accounts
                .deposit(authorized(deposit(None, "r1", ""), token))
                .await
                .map(drop),
            "amount",
            "required",
        ),
        (
            "deposit: zero",
            accounts
                .deposit(authorized(deposit(usd(0), "r1", ""), token))
                .await
                .map(drop),
            "amount.amount_minor",
            "int64.gt",
        ),
        (
            "deposit: a lower-case currency",
            accounts
                .deposit(authorized(
                    deposit(
                        Some(Money {
                            amount_minor: 1,
                            currency_code: "usd".into(),
                        }),
                        "r1",
                        "",
                    ),
                    token,
                ))
                .await
                .map(drop),
            "amount.currency_code",
            "string.pattern",
        ),
        (
            "deposit: no request id",
            accounts
                .deposit(authorized(deposit(usd(1), "", ""), token))
                .await
                .map(drop),
            "request_id",
            "string.min_len",
        ),
        (
            "deposit: a long reason",
            accounts
                .deposit(authorized(deposit(usd(1), "r1", &"x".repeat(65)), token))
                .await
                .map(drop),
            "reason",
            "string.max_len",
        ),
        (
            "balance: not a UUID",
            accounts
                .get_balance(authorized(pb::GetBalanceRequest { account_id: "x".into() }, token))
                .await
                .map(drop),
            "account_id",
            "string.pattern",
        ),
        (
            "transactions: a negative page size",
            accounts
                .list_transactions(authorized(
                    pb::ListTransactionsRequest {
                        account_id: "me".into(),
                        page_size: -5,
                        page_token: String::new(),
                    },
                    token,
                ))
                .await
                .map(drop),
            "page_size",
            "int32.gte",
        ),
        (
            "refund: not a UUID",
            accounts
                .refund(authorized(
                    pb::RefundRequest {
                        account_id: UUID.into(),
                        amount: usd(1),
                        request_id: "r1".into(),
                        reference: String::new(),
                        reason: String::new(),
                        debit_transaction_id: "x".into(),
                    },
                    token,
                ))
                .await
                .map(drop),
            "debit_transaction_id",
            "string.uuid",
        ),
        (
            "void debit: no refund key",
            accounts
                .void_debit(authorized(
                    pb::VoidDebitRequest {
                        account_id: UUID.into(),
                        request_id: "r1".into(),
                        refund_request_id: String::new(),
                        reason: String::new(),
                    },
                    token,
                ))
                .await
                .map(drop),
            "refund_request_id",
            "string.min_len",
        ),
    ];
    for (case, result, field, rule) in cases {
        assert_rule(case, result, field, rule);
    }

    // What keeps the rules goes through.
    let account = accounts
        .get_account(authorized(
            pb::GetAccountRequest {
                account_id: "me".into(),
            },
            token,
        ))
        .await?
        .into_inner()
        .account
        .expect("an account");
    let balance = accounts
        .deposit(authorized(
            pb::DepositRequest {
                account_id: account.id,
                ..deposit(usd(250), "r1", "a gift")
            },
            token,
        ))
        .await?
        .into_inner();
    assert!(balance.transaction.is_some());
    suite.stop().await
}
