//! Under concurrency stock is never oversold and a key never charges twice.

mod common;

use common::fixture;
use futures::future::join_all;
use keel::orders::v1 as pb;
use keel_testkit::status::reason;

#[tokio::test(flavor = "multi_thread")]
async fn fifty_buyers_for_ten_units_make_exactly_ten_orders() -> anyhow::Result<()> {
    let fx = fixture().await?;
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
