//! Accounts' relay: BalanceChanged is delivered to notifications and marked
//! done with its payload cleared, and done events are deleted after the
//! retention period.

use std::time::Duration;

use diesel::{ExpressionMethods as _, QueryDsl as _};
use diesel_async::RunQueryDsl as _;
use keel::{accounts::v1 as pb, common::v1::Money};
use keel_platform::events::outbox::outbox;
use keel_testkit::{Suite, SuiteOptions, authorized, spawn_suite_with_options};

/// A user's account with one deposit in it.
async fn deposit_once(suite: &Suite) -> anyhow::Result<()> {
    let (user, tokens) = suite.signed_in_user().await?;
    let mut accounts = suite.accounts();
    accounts
        .get_balance(authorized(
            pb::GetBalanceRequest {
                account_id: "me".into(),
            },
            &tokens.access_token,
        ))
        .await?;
    let (_, admin) = suite.signed_in_admin().await?;
    accounts
        .deposit(authorized(
            pb::DepositRequest {
                account_id: user.id,
                amount: Some(Money {
                    amount_minor: 2_500,
                    currency_code: "USD".into(),
                }),
                request_id: "outbox-deposit".into(),
                ..Default::default()
            },
            &admin.access_token,
        ))
        .await?;
    Ok(())
}

/// Accounts' BalanceChanged rows: (marked done, payload kept).
async fn balance_rows(suite: &Suite) -> anyhow::Result<Vec<(bool, bool)>> {
    let rows: Vec<(Option<chrono::DateTime<chrono::Utc>>, Vec<u8>)> = outbox::table
        .filter(outbox::event_type.eq("balance.changed"))
        .select((outbox::published_at, outbox::payload))
        .load(&mut suite.accounts_db().await?)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(done, payload)| (done.is_some(), !payload.is_empty()))
        .collect())
}

/// Polls `rows` until `done` says so, for at most 10 s.
async fn eventually(suite: &Suite, done: impl Fn(&[(bool, bool)]) -> bool) -> anyhow::Result<Vec<(bool, bool)>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rows = balance_rows(suite).await?;
        if done(&rows) || tokio::time::Instant::now() > deadline {
            return Ok(rows);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deposit_s_balance_changed_is_delivered_and_marked_done() -> anyhow::Result<()> {
    let suite = spawn_suite_with_options(SuiteOptions::default()).await?;
    deposit_once(&suite).await?;
    let rows = eventually(&suite, |rows| !rows.is_empty() && rows.iter().all(|(done, _)| *done)).await?;
    // Delivered: the row stays on record until retention ends, its payload
    // cleared.
    assert_eq!(rows, [(true, false)]);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn done_events_are_deleted_after_the_retention_period() -> anyhow::Result<()> {
    let suite =
        spawn_suite_with_options(SuiteOptions::default().args("accounts", &["--outbox-retention-secs", "1"])).await?;
    deposit_once(&suite).await?;
    let rows = eventually(&suite, <[_]>::is_empty).await?;
    assert!(rows.is_empty(), "still in the outbox: {rows:?}");
    suite.stop().await
}
