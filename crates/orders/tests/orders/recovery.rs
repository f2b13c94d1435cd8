//! Crashes and outages: whatever step the saga was at when orders stopped or
//! accounts could not be reached, the order ends PAID with exactly one
//! charge, or CANCELLED with its stock back and any charge refunded.

use crate::common;

use chrono::Utc;
use common::fixture_with;
use keel::orders::v1 as pb;
use keel_orders::{
    status::{OrderStatus, RefundState},
    store,
};
use keel_testkit::status::reason;

const ACCOUNTS: &str = "accounts";
const ORDERS: &str = "orders";

#[tokio::test(flavor = "multi_thread")]
async fn an_order_placed_while_accounts_is_down_is_paid_once_after_a_restart() -> anyhow::Result<()> {
    let mut fx = fixture_with(&[]).await?;
    let tea = fx.product("Tea", 450, 10).await?;
    let buyer = fx.buyer(1_000).await?;

    fx.suite.stop_service(ACCOUNTS).await?;
    let order = fx.order(&buyer, "during-outage", &[(&tea.id, 2)]).await?;
    assert_eq!(
        order.status,
        pb::OrderStatus::PendingPayment as i32,
        "the charge's outcome is unknown"
    );
    assert_eq!(fx.stock(&tea.id).await?, 8, "the units stay reserved");
    // Orders dies with the order reserved and unpaid.
    fx.suite.stop_service(ORDERS).await?;
    fx.suite.start(ACCOUNTS).await?;
    fx.suite.start(ORDERS).await?;

    let paid = fx
        .settled(&order.id, |o| o.status != OrderStatus::PendingPayment)
        .await?;
    assert_eq!(paid.status, OrderStatus::Paid);
    assert_eq!(fx.charges_of(&order.id).await?, 1);
    assert_eq!(fx.balance(&buyer).await?, 100);
    assert_eq!(fx.stock(&tea.id).await?, 8);
    // The buyer's retry now sees the paid order.
    let retry = fx.order(&buyer, "during-outage", &[(&tea.id, 2)]).await?;
    assert_eq!(
        (retry.id, retry.status),
        (order.id.clone(), pb::OrderStatus::Paid as i32)
    );
    assert_eq!(fx.charges_of(&order.id).await?, 1);
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_that_crashed_before_its_charge_is_charged_once_after_restart() -> anyhow::Result<()> {
    let mut fx = fixture_with(&["--test-crash-after", "reservation"]).await?;
    let tea = fx.product("Tea", 450, 10).await?;
    let buyer = fx.buyer(1_000).await?;

    let order = fx.order(&buyer, "reserved-then-crashed", &[(&tea.id, 2)]).await?;
    assert_eq!(order.status, pb::OrderStatus::PendingPayment as i32);
    assert_eq!(fx.stock(&tea.id).await?, 8);
    fx.suite.stop_service(ORDERS).await?;
    fx.suite.start(ORDERS).await?;

    let paid = fx
        .settled(&order.id, |o| o.status != OrderStatus::PendingPayment)
        .await?;
    assert_eq!(paid.status, OrderStatus::Paid);
    assert_eq!(fx.charges_of(&order.id).await?, 1);
    assert_eq!(fx.balance(&buyer).await?, 100);
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_charged_before_a_crash_is_recorded_once_after_restart() -> anyhow::Result<()> {
    let mut fx = fixture_with(&["--test-crash-after", "charge"]).await?;
    let tea = fx.product("Tea", 450, 10).await?;
    let buyer = fx.buyer(1_000).await?;

    let order = fx.order(&buyer, "charged-then-crashed", &[(&tea.id, 1)]).await?;
    assert_eq!(order.status, pb::OrderStatus::PendingPayment as i32);
    assert_eq!(fx.charges_of(&order.id).await?, 1, "the money moved");
    fx.suite.stop_service(ORDERS).await?;
    fx.suite.start(ORDERS).await?;

    let paid = fx
        .settled(&order.id, |o| o.status != OrderStatus::PendingPayment)
        .await?;
    assert_eq!(paid.status, OrderStatus::Paid);
    assert_eq!(
        fx.charges_of(&order.id).await?,
        1,
        "the resumed charge replayed the first"
    );
    assert_eq!(fx.balance(&buyer).await?, 550);
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_decline_found_on_resume_cancels_and_releases_the_stock() -> anyhow::Result<()> {
    let mut fx = fixture_with(&[]).await?;
    let tea = fx.product("Tea", 450, 10).await?;
    let buyer = fx.buyer(100).await?;

    fx.suite.stop_service(ACCOUNTS).await?;
    let order = fx.order(&buyer, "short", &[(&tea.id, 1)]).await?;
    assert_eq!(order.status, pb::OrderStatus::PendingPayment as i32);
    // An unpaid order is neither shipped nor delivered.
    for refused in [
        fx.ship(&fx.admin, &order.id).await,
        fx.deliver(&fx.admin, &order.id).await,
    ] {
        let refused = refused.expect_err("unpaid");
        assert_eq!(reason(&refused), "INVALID_ORDER_STATUS");
    }
    fx.suite.start(ACCOUNTS).await?;

    let cancelled = fx
        .settled(&order.id, |o| o.status != OrderStatus::PendingPayment)
        .await?;
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert_eq!(cancelled.cancel_reason.as_deref(), Some("INSUFFICIENT_FUNDS"));
    assert_eq!(cancelled.refund_state, RefundState::NotNeeded);
    assert_eq!(fx.stock(&tea.id).await?, 10);
    let retry = fx
        .order(&buyer, "short", &[(&tea.id, 1)])
        .await
        .expect_err("the outcome is known now");
    assert_eq!(reason(&retry), "INSUFFICIENT_FUNDS");
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_interrupted_by_an_outage_and_a_crash_is_finished_later() -> anyhow::Result<()> {
    let mut fx = fixture_with(&[]).await?;
    let tea = fx.product("Tea", 450, 10).await?;
    let buyer = fx.buyer(1_000).await?;
    let order = fx.order(&buyer, "buy", &[(&tea.id, 2)]).await?;
    assert_eq!(order.status, pb::OrderStatus::Paid as i32);

    fx.suite.stop_service(ACCOUNTS).await?;
    let cancelled = fx.cancel(&buyer.token, &order.id, "cancel").await?;
    assert_eq!(cancelled.status, pb::OrderStatus::Cancelled as i32);
    assert_eq!(fx.stock(&tea.id).await?, 10, "the units are back at once");
    assert_eq!(fx.stored_order(&order.id).await?.refund_state, RefundState::Due);
    // Orders stops too, with the refund still owed.
    fx.suite.stop_service(ORDERS).await?;
    fx.suite.start(ACCOUNTS).await?;
    fx.suite.start(ORDERS).await?;

    let refunded = fx.settled(&order.id, |o| o.refund_state != RefundState::Due).await?;
    assert_eq!(refunded.refund_state, RefundState::Done);
    assert_eq!(fx.refunds_of(&order.id).await?, 1);
    assert_eq!(fx.balance(&buyer).await?, 1_000);
    let retry = fx.cancel(&buyer.token, &order.id, "cancel").await?;
    assert_eq!(retry.status, pb::OrderStatus::Cancelled as i32);
    assert_eq!(fx.refunds_of(&order.id).await?, 1);
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_unpaid_past_its_deadline_is_cancelled_and_a_late_charge_refunded() -> anyhow::Result<()> {
    let mut fx = fixture_with(&["--payment-deadline-secs", "1"]).await?;
    let tea = fx.product("Tea", 450, 10).await?;
    let buyer = fx.buyer(1_000).await?;

    fx.suite.stop_service(ACCOUNTS).await?;
    let order = fx.order(&buyer, "never-paid", &[(&tea.id, 3)]).await?;
    assert_eq!(order.status, pb::OrderStatus::PendingPayment as i32);
    let expired = fx.settled(&order.id, |o| o.status == OrderStatus::Cancelled).await?;
    assert_eq!(expired.cancel_reason.as_deref(), Some("PAYMENT_DEADLINE_PASSED"));
    assert_eq!(
        expired.refund_state,
        RefundState::Unknown,
        "whether it was charged is not known yet"
    );
    assert_eq!(fx.stock(&tea.id).await?, 10, "the units are back");

    fx.suite.start(ACCOUNTS).await?;
    let settled = fx
        .settled(&order.id, |o| o.refund_state != RefundState::Unknown)
        .await?;
    assert!(
        matches!(settled.refund_state, RefundState::Done | RefundState::NotNeeded),
        "{settled:?}"
    );
    assert_eq!(fx.balance(&buyer).await?, 1_000, "whatever was charged came back");
    assert_eq!(
        fx.get_order(&buyer.token, &order.id).await?.status,
        pb::OrderStatus::Cancelled as i32
    );
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_an_unpaid_order_settles_a_charge_that_went_through() -> anyhow::Result<()> {
    let mut fx = fixture_with(&["--test-crash-after", "charge"]).await?;
    let tea = fx.product("Tea", 450, 10).await?;
    let buyer = fx.buyer(1_000).await?;
    // Charged, but orders "crashed" before recording it; the buyer cancels
    // the order they see as unpaid.
    let order = fx.order(&buyer, "charged", &[(&tea.id, 1)]).await?;
    fx.suite.stop_service(ORDERS).await?;
    fx.suite.start(ORDERS).await?;
    let now = fx.get_order(&buyer.token, &order.id).await?;
    let cancelled = fx.cancel(&buyer.token, &order.id, "cancel").await?;
    assert_eq!(
        cancelled.status,
        pb::OrderStatus::Cancelled as i32,
        "from {:?}",
        now.status
    );
    let settled = fx.settled(&order.id, |o| o.refund_state == RefundState::Done).await?;
    assert_eq!(settled.status, OrderStatus::Cancelled);
    assert_eq!(fx.charges_of(&order.id).await?, 1);
    assert_eq!(fx.refunds_of(&order.id).await?, 1);
    assert_eq!(fx.balance(&buyer).await?, 1_000);
    assert_eq!(fx.stock(&tea.id).await?, 10);
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn resumers_never_claim_the_same_order() -> anyhow::Result<()> {
    let mut fx = fixture_with(&[]).await?;
    let tea = fx.product("Tea", 100, 100).await?;
    let buyer = fx.buyer(100_000).await?;
    fx.suite.stop_service(ACCOUNTS).await?;
    let mut placed = Vec::new();
    for i in 0..6 {
        placed.push(fx.order(&buyer, &format!("o{i}"), &[(&tea.id, 1)]).await?.id);
    }
    // Only the claimers below work on them.
    fx.suite.stop_service(ORDERS).await?;
    // CreateOrder held each for the resumer's interval after accounts
    // failed to answer; let that pass.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let lease = std::time::Duration::from_secs(120);
    let claim = || async {
        let mut conn = fx.suite.db(ORDERS).await?;
        let mut claimed = Vec::new();
        for _ in 0..3 {
            claimed.extend(store::orders::claim_next(&mut conn, lease).await?);
        }
        anyhow::Ok(claimed)
    };
    let (a, b) = tokio::join!(claim(), claim());
    let mut claimed: Vec<String> = a?.into_iter().chain(b?).map(|o| o.id.to_string()).collect();
    claimed.sort();
    placed.sort();
    assert_eq!(claimed, placed, "six orders, each claimed once");
    let mut conn = fx.suite.db(ORDERS).await?;
    let again = store::orders::claim_next(&mut conn, lease).await?;
    assert!(again.is_none(), "held orders are not claimed again");

    // Back up, the resumer pays them all once the claims above run out.
    fx.suite.start(ACCOUNTS).await?;
    fx.suite.start(ORDERS).await?;
    drop(conn);
    let mut conn = fx.suite.db(ORDERS).await?;
    {
        use diesel::ExpressionMethods as _;
        use diesel_async::RunQueryDsl as _;
        use keel_orders::schema::orders;
        // The test's claims were far in the future; hand them back.
        diesel::update(orders::table)
            .set(orders::lease_until.eq(None::<chrono::DateTime<Utc>>))
            .execute(&mut conn)
            .await?;
    }
    for id in &placed {
        let order = fx.settled(id, |o| o.status != OrderStatus::PendingPayment).await?;
        assert_eq!(order.status, OrderStatus::Paid);
        assert_eq!(fx.charges_of(id).await?, 1);
    }
    fx.check_invariants().await
}

/// The moves the code knows and the moves the database allows are one list;
/// a stale writer that tries to move a state back is refused by the
/// database itself.
#[tokio::test(flavor = "multi_thread")]
async fn the_database_allows_exactly_the_moves_the_code_names() -> anyhow::Result<()> {
    use std::collections::BTreeSet;

    use diesel::{ExpressionMethods as _, QueryDsl as _};
    use diesel_async::RunQueryDsl as _;
    use keel_orders::{
        schema::{order_state_moves, orders},
        status::{PaymentState, Transition},
    };

    let fx = fixture_with(&[]).await?;
    let mut conn = fx.suite.db(ORDERS).await?;
    let stored: BTreeSet<(String, String, String)> = order_state_moves::table
        .select((
            order_state_moves::machine,
            order_state_moves::from_state,
            order_state_moves::to_state,
        ))
        .load(&mut conn)
        .await?
        .into_iter()
        .collect();
    let mut named = BTreeSet::new();
    for from in OrderStatus::ALL {
        for step in [
            Transition::Pay,
            Transition::Ship,
            Transition::Deliver,
            Transition::Cancel,
        ] {
            if let Ok(to) = from.apply(step) {
                named.insert(("status".to_owned(), from.as_str().to_owned(), to.as_str().to_owned()));
            }
        }
    }
    for (from, to) in PaymentState::MOVES {
        named.insert(("payment".to_owned(), from.as_str().to_owned(), to.as_str().to_owned()));
    }
    for (from, to) in RefundState::MOVES {
        named.insert(("refund".to_owned(), from.as_str().to_owned(), to.as_str().to_owned()));
    }
    assert_eq!(stored, named);

    // A paid order's payment cannot be "declined" by a late answer, nor its
    // charge reference replaced, nor its claim wound back.
    let tea = fx.product("Tea", 100, 10).await?;
    let buyer = fx.buyer(1_000).await?;
    let order = fx.order(&buyer, "paid", &[(&tea.id, 1)]).await?;
    let id = uuid::Uuid::parse_str(&order.id)?;
    let late_decline = diesel::update(orders::table.find(id))
        .set(orders::payment_state.eq(PaymentState::Declined))
        .execute(&mut conn)
        .await;
    assert!(late_decline.is_err(), "charged -> declined must be refused");
    let other_charge = diesel::update(orders::table.find(id))
        .set(orders::charge_reference.eq("another"))
        .execute(&mut conn)
        .await;
    assert!(other_charge.is_err(), "the stored charge stays");
    let wound_back = diesel::update(orders::table.find(id))
        .set(orders::claim.eq(0))
        .execute(&mut conn)
        .await;
    assert!(wound_back.is_err(), "a claim only grows");
    fx.check_invariants().await
}
