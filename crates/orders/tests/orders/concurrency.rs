//! Under concurrency stock is never oversold and a key never charges twice.

use crate::common;

use common::{fixture, fixture_with};
use futures::future::join_all;
use keel::orders::v1 as pb;
use keel_testkit::status::reason;

#[tokio::test(flavor = "multi_thread")]
async fn fifty_buyers_for_ten_units_make_exactly_ten_orders() -> anyhow::Result<()> {
    // Fifty calls at once on two cores take longer than QUICK's hold; with a
    // shorter one the resumer would rightly take some orders over, and their
    // CreateOrder would answer them still PENDING_PAYMENT.
    let fx = fixture_with(&["--payment-lease-ms", "10000"]).await?;
    let tea = fx.product("Tea", 300, 10).await?;
    let buyer = fx.buyer(1_000_000).await?;
    let attempts = (0..50).map(|i| {
        let fx = &fx;
        let buyer = &buyer;
        let product = tea.id.clone();
        async move { fx.order(buyer, &format!("rush-{i}"), &[(&product, 1)]).await }
    });
    let results = join_all(attempts).await;
    let paid = results
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|o| o.status == pb::OrderStatus::Paid as i32))
        .count();
    let short = results
        .iter()
        .filter(|r| r.as_ref().is_err_and(|s| reason(s) == "INSUFFICIENT_STOCK"))
        .count();
    let other: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .filter(|s| reason(s) != "INSUFFICIENT_STOCK")
        .collect();
    assert!(other.is_empty(), "unexpected failures: {other:?}");
    assert_eq!((paid, short), (10, 40));
    assert_eq!(fx.stock(&tea.id).await?, 0);
    assert_eq!(fx.balance(&buyer).await?, 1_000_000 - 10 * 300);
    let debits = fx
        .order_entries()
        .await?
        .into_iter()
        .filter(|(_, kind, _, _)| kind == "debit")
        .count();
    assert_eq!(debits, 10, "debited exactly ten times");
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_identical_requests_at_once_make_one_order_and_one_charge() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let tea = fx.product("Tea", 300, 100).await?;
    let buyer = fx.buyer(1_000_000).await?;
    let attempts = (0..10).map(|_| {
        let fx = &fx;
        let buyer = &buyer;
        let product = tea.id.clone();
        async move { fx.order(buyer, "double-click", &[(&product, 3)]).await }
    });
    let results = join_all(attempts).await;
    let orders: Vec<pb::Order> = results.into_iter().collect::<Result<_, _>>()?;
    let first = &orders[0].id;
    assert!(orders.iter().all(|o| &o.id == first), "one order for one key");
    // Each answer is the order as it was then: paid, or still being paid
    // by the first call.
    assert!(
        orders
            .iter()
            .all(|o| o.status == pb::OrderStatus::Paid as i32 || o.status == pb::OrderStatus::PendingPayment as i32)
    );
    let order = fx
        .settled(first, |o| o.status == keel_orders::status::OrderStatus::Paid)
        .await?;
    assert_eq!(order.total_minor, 900);
    assert_eq!(fx.charges_of(first).await?, 1);
    assert_eq!(fx.stock(&tea.id).await?, 97);
    assert_eq!(fx.balance(&buyer).await?, 1_000_000 - 900);
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_cancels_refund_once() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let tea = fx.product("Tea", 300, 10).await?;
    let buyer = fx.buyer(1_000).await?;
    let order = fx.order(&buyer, "buy", &[(&tea.id, 2)]).await?;
    let cancels = (0..8).map(|i| {
        let fx = &fx;
        let token = buyer.token.clone();
        let id = order.id.clone();
        // Half retry one key, half use keys of their own.
        let key = if i % 2 == 0 {
            "same".to_owned()
        } else {
            format!("own-{i}")
        };
        async move { fx.cancel(&token, &id, &key).await }
    });
    let results = join_all(cancels).await;
    assert!(results.iter().any(Result::is_ok));
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(reason(refused), "ORDER_NOT_CANCELLABLE", "{refused:?}");
    }
    let settled = fx
        .settled(&order.id, |o| o.refund_state == keel_orders::status::RefundState::Done)
        .await?;
    assert_eq!(settled.status, keel_orders::status::OrderStatus::Cancelled);
    assert_eq!(fx.refunds_of(&order.id).await?, 1);
    assert_eq!(fx.balance(&buyer).await?, 1_000);
    assert_eq!(fx.stock(&tea.id).await?, 10, "the units came back once");
    fx.check_invariants().await
}

/// Sequence 3 of "money moves exactly once": the balance is empty, accounts
/// declines the Debit at once but the answer reaches orders a second later;
/// meanwhile an admin deposits and the buyer cancels. The decline is final
/// (its key replays it), the cancel voids the key instead of replaying the
/// Debit, and the late decline changes nothing: the buyer keeps every cent.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_decline_a_deposit_and_a_cancel_take_nothing() -> anyhow::Result<()> {
    use std::time::Duration;

    use keel::accounts::v1 as accounts_pb;
    use keel_orders::status::{OrderStatus, PaymentState, RefundState};
    use keel_testkit::authorized;

    let (fx, proxy) = common::fixture_through_proxy(&["--payment-lease-ms", "5000"]).await?;
    let tea = fx.product("Tea", 1_500, 10).await?;
    let buyer = fx.buyer(0).await?;
    proxy.delay_replies(Duration::from_secs(1));
    let meanwhile = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        fx.suite
            .accounts()
            .deposit(authorized(
                accounts_pb::DepositRequest {
                    account_id: buyer.id.clone(),
                    amount: common::usd(5_000),
                    request_id: "top-up".into(),
                    ..Default::default()
                },
                &fx.admin,
            ))
            .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let order = fx
            .list_own(&buyer)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("the order is not placed yet"))?;
        anyhow::Ok(fx.cancel(&buyer.token, &order.id, "cancel-1").await?)
    };
    let lines = [(tea.id.as_str(), 1)];
    let (created, cancelled) = tokio::join!(fx.order(&buyer, "slow-decline", &lines), meanwhile);
    let cancelled = cancelled?;
    assert_eq!(cancelled.status, pb::OrderStatus::Cancelled as i32);
    // CreateOrder answers with the order as it stands: cancelled on request.
    let created = created?;
    assert_eq!(created.status, pb::OrderStatus::Cancelled as i32);
    proxy.delay_replies(Duration::ZERO);
    let settled = fx
        .settled(&cancelled.id, |o| o.refund_state != RefundState::Unknown)
        .await?;
    assert_eq!(
        (settled.status, settled.payment_state, settled.refund_state),
        (OrderStatus::Cancelled, PaymentState::Voided, RefundState::NotNeeded)
    );
    // Whatever the resumer would do, it has had time to.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fx.balance(&buyer).await?, 5_000, "the deposit, untouched");
    assert_eq!(fx.charges_of(&cancelled.id).await?, 0);
    assert_eq!(fx.stock(&tea.id).await?, 10);
    fx.check_invariants().await
}
