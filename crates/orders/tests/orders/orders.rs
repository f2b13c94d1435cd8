//! Orders from the balance: placed, paid, listed, cancelled with a refund,
//! shipped and delivered; every refusal the contract names; who may see and
//! change what.

use crate::common;

use common::{fixture, usd};
use keel::orders::v1::{self as pb, create_order_request::LineItem};
use keel_orders::status::RefundState;
use keel_testkit::{
    authorized,
    status::{reason, violated_fields},
};
use tonic::Code;
use tonic_types::StatusExt as _;

fn metadata(status: &tonic::Status, key: &str) -> Option<String> {
    status
        .get_details_error_info()
        .and_then(|info| info.metadata.get(key).cloned())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_is_paid_from_the_balance_at_the_catalog_price() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let tea = fx.product("Tea", 450, 10).await?;
    let cup = fx.product("Cup", 1200, 3).await?;
    let buyer = fx.buyer(10_000).await?;

    let order = fx.order(&buyer, "first", &[(&tea.id, 2), (&cup.id, 1)]).await?;
    assert_eq!(order.status, pb::OrderStatus::Paid as i32);
    assert_eq!(order.user_id, buyer.id);
    assert_eq!(order.total, usd(2 * 450 + 1200));
    assert_eq!(order.payment_method, pb::PaymentMethod::AccountBalance as i32);
    let lines: Vec<_> = order
        .items
        .iter()
        .map(|i| {
            (
                i.product_name.as_str(),
                i.quantity,
                i.unit_price.clone(),
                i.line_total.clone(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [("Tea", 2, usd(450), usd(900)), ("Cup", 1, usd(1200), usd(1200))],
        "lines in the order given, with the catalog's prices"
    );
    assert_eq!(fx.balance(&buyer).await?, 10_000 - 2100);
    assert_eq!(fx.stock(&tea.id).await?, 8);
    assert_eq!(fx.stock(&cup.id).await?, 2);
    assert_eq!(fx.charges_of(&order.id).await?, 1);

    // A later price change leaves the placed order as it was.
    fx.orders()
        .update_product(authorized(
            pb::UpdateProductRequest {
                product: Some(pb::Product {
                    id: tea.id.clone(),
                    price: usd(1),
                    ..Default::default()
                }),
                update_mask: None,
            },
            &fx.admin,
        ))
        .await?;
    let read = fx.get_order(&buyer.token, &order.id).await?;
    assert_eq!(read.total, usd(2100));
    assert_eq!(read.items[0].unit_price, usd(450));
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_returns_the_first_order_and_charges_once() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let tea = fx.product("Tea", 450, 10).await?;
    let buyer = fx.buyer(10_000).await?;
    let first = fx.order(&buyer, "same-key", &[(&tea.id, 1)]).await?;
    let retry = fx.order(&buyer, "same-key", &[(&tea.id, 1)]).await?;
    assert_eq!(retry.id, first.id);
    assert_eq!(retry.status, pb::OrderStatus::Paid as i32);
    assert_eq!(fx.charges_of(&first.id).await?, 1);
    assert_eq!(fx.stock(&tea.id).await?, 9);
    assert_eq!(fx.balance(&buyer).await?, 10_000 - 450);

    let reused = fx
        .order(&buyer, "same-key", &[(&tea.id, 2)])
        .await
        .expect_err("same key, other order");
    assert_eq!(reused.code(), Code::AlreadyExists);
    assert_eq!(reason(&reused), "REQUEST_ID_REUSED");

    // Keys belong to their buyer: another buyer's same key is another order.
    let other = fx.buyer(1_000).await?;
    let theirs = fx.order(&other, "same-key", &[(&tea.id, 1)]).await?;
    assert_ne!(theirs.id, first.id);
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn insufficient_funds_cancel_the_order_and_release_its_stock() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let tea = fx.product("Tea", 450, 10).await?;
    let buyer = fx.buyer(400).await?;
    let refused = fx
        .order(&buyer, "too-dear", &[(&tea.id, 1)])
        .await
        .expect_err("the balance is short");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason(&refused), "INSUFFICIENT_FUNDS");
    let order_id = metadata(&refused, "order_id").expect("the cancelled order's id");
    let order = fx.get_order(&buyer.token, &order_id).await?;
    assert_eq!(order.status, pb::OrderStatus::Cancelled as i32);
    assert_eq!(fx.stock(&tea.id).await?, 10, "the reservation was released");
    assert_eq!(fx.balance(&buyer).await?, 400, "nothing was charged");
    assert_eq!(fx.charges_of(&order_id).await?, 0);

    // The retry gets the first answer, and still charges nothing.
    let again = fx
        .order(&buyer, "too-dear", &[(&tea.id, 1)])
        .await
        .expect_err("the first result");
    assert_eq!(reason(&again), "INSUFFICIENT_FUNDS");
    assert_eq!(fx.stock(&tea.id).await?, 10);

    // A buyer without any account has no balance either.
    let (_, stranger) = fx.suite.signed_in_user().await?;
    let stranger = common::Buyer {
        id: String::new(),
        token: stranger.access_token,
    };
    let none = fx
        .order(&stranger, "no-account", &[(&tea.id, 1)])
        .await
        .expect_err("no balance");
    assert_eq!(reason(&none), "INSUFFICIENT_FUNDS");
    assert_eq!(fx.stock(&tea.id).await?, 10);
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn stock_is_reserved_for_every_line_or_none() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let tea = fx.product("Tea", 450, 10).await?;
    let cup = fx.product("Cup", 1200, 1).await?;
    let buyer = fx.buyer(100_000).await?;
    let short = fx
        .order(&buyer, "two-cups", &[(&tea.id, 3), (&cup.id, 2)])
        .await
        .expect_err("one cup only");
    assert_eq!(short.code(), Code::FailedPrecondition);
    assert_eq!(reason(&short), "INSUFFICIENT_STOCK");
    assert_eq!(metadata(&short, "product_id"), Some(cup.id.clone()));
    assert_eq!(fx.stock(&tea.id).await?, 10, "the tea line was not reserved either");
    assert_eq!(fx.stock(&cup.id).await?, 1);

    let ghost = uuid::Uuid::now_v7().to_string();
    let missing = fx
        .order(&buyer, "ghost", &[(&tea.id, 1), (&ghost, 1)])
        .await
        .expect_err("unknown product");
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(reason(&missing), "PRODUCT_NOT_FOUND");
    assert_eq!(metadata(&missing, "product_id"), Some(ghost));

    let euro = fx.product_in("Croissant", 150, "EUR", 10).await?;
    let mixed = fx
        .order(&buyer, "mixed", &[(&tea.id, 1), (&euro.id, 1)])
        .await
        .expect_err("two currencies");
    assert_eq!(reason(&mixed), "CURRENCY_MISMATCH");
    assert_eq!(fx.stock(&tea.id).await?, 10);
    assert_eq!(fx.stock(&euro.id).await?, 10);
    assert_eq!(fx.balance(&buyer).await?, 100_000, "nothing was charged");

    // A product may appear in several lines; each is kept as given.
    let twice = fx.order(&buyer, "twice", &[(&tea.id, 1), (&tea.id, 2)]).await?;
    let lines: Vec<i32> = twice.items.iter().map(|item| item.quantity).collect();
    assert_eq!(lines, [1, 2]);
    assert_eq!(fx.stock(&tea.id).await?, 7);
    assert_eq!(fx.balance(&buyer).await?, 100_000 - 3 * 450);
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_orders_are_refused_naming_every_bad_field() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let tea = fx.product("Tea", 450, 10).await?;
    let buyer = fx.buyer(1_000).await?;
    let refused = fx
        .orders()
        .create_order(authorized(
            pb::CreateOrderRequest {
                request_id: String::new(),
                items: vec![
                    LineItem {
                        product_id: tea.id.clone(),
                        quantity: 0,
                    },
                    LineItem {
                        product_id: "nope".into(),
                        quantity: 1,
                    },
                    LineItem {
                        product_id: tea.id.clone(),
                        quantity: 1,
                    },
                ],
                payment_method: pb::PaymentMethod::Unspecified as i32,
                external_payment_method_id: String::new(),
            },
            &buyer.token,
        ))
        .await
        .expect_err("invalid");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&refused),
        [
            "request_id",
            "payment_method",
            "items[0].quantity",
            "items[1].product_id"
        ]
    );
    let empty = fx.order(&buyer, "empty", &[]).await.expect_err("no lines");
    assert_eq!(violated_fields(&empty), ["items"]);

    // A total no payment could carry is refused before anything is reserved.
    let gold = fx.product("Gold bar", 1_000_000_000_000, 5_000).await?;
    let dear = fx
        .order(&buyer, "dear", &[(&gold.id, 1000), (&tea.id, 1)])
        .await
        .expect_err("10^15 + 450");
    assert_eq!(dear.code(), Code::FailedPrecondition);
    assert_eq!(reason(&dear), "TOTAL_TOO_LARGE");
    assert_eq!(fx.stock(&gold.id).await?, 5_000);

    let card = fx
        .orders()
        .create_order(authorized(
            pb::CreateOrderRequest {
                request_id: "card".into(),
                items: vec![LineItem {
                    product_id: tea.id.clone(),
                    quantity: 1,
                }],
                payment_method: pb::PaymentMethod::External as i32,
                external_payment_method_id: "pm_card_visa".into(),
            },
            &buyer.token,
        ))
        .await
        .expect_err("no card gateway in this suite");
    assert_eq!(card.code(), Code::FailedPrecondition);
    assert_eq!(reason(&card), "PAYMENT_METHOD_UNAVAILABLE");
    assert_eq!(fx.stock(&tea.id).await?, 10);

    let admin_service = fx.suite.service_token(&[]).await?;
    let service = fx
        .orders()
        .create_order(authorized(
            pb::CreateOrderRequest {
                request_id: "svc".into(),
                items: vec![LineItem {
                    product_id: tea.id.clone(),
                    quantity: 1,
                }],
                payment_method: pb::PaymentMethod::AccountBalance as i32,
                external_payment_method_id: String::new(),
            },
            &admin_service,
        ))
        .await
        .expect_err("services do not buy");
    assert_eq!(service.code(), Code::PermissionDenied);
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn buyers_see_their_own_orders_and_admins_see_all() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let tea = fx.product("Tea", 100, 100).await?;
    let alice = fx.buyer(10_000).await?;
    let bob = fx.buyer(10_000).await?;
    let mut alices = Vec::new();
    for i in 0..3 {
        alices.push(fx.order(&alice, &format!("a{i}"), &[(&tea.id, 1)]).await?.id);
    }
    let bobs = fx.order(&bob, "b0", &[(&tea.id, 1)]).await?.id;
    fx.cancel(&alice.token, &alices[0], "cancel-a0").await?;

    // Another buyer's order answers as a missing one.
    let hidden = fx.get_order(&bob.token, &alices[1]).await.expect_err("not Bob's");
    assert_eq!(hidden.code(), Code::NotFound);
    let missing = fx
        .get_order(&bob.token, &uuid::Uuid::now_v7().to_string())
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(hidden.message(), missing.message(), "the two are indistinguishable");
    let foreign_cancel = fx
        .cancel(&bob.token, &alices[1], "not-mine")
        .await
        .expect_err("not Bob's");
    assert_eq!(foreign_cancel.code(), Code::NotFound);
    assert_eq!(fx.get_order(&fx.admin, &alices[1]).await?.user_id, alice.id);

    let list = |token: String, user_id: String, status: pb::OrderStatus, page_size: i32, page_token: String| {
        let mut client = fx.orders();
        async move {
            client
                .list_orders(authorized(
                    pb::ListOrdersRequest {
                        page_size,
                        page_token,
                        status: status as i32,
                        user_id,
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .map(|r| r.into_inner())
        }
    };
    let own = list(
        alice.token.clone(),
        String::new(),
        pb::OrderStatus::Unspecified,
        0,
        String::new(),
    )
    .await?;
    let ids: Vec<_> = own.orders.iter().map(|o| o.id.clone()).collect();
    assert_eq!(
        ids,
        alices.iter().rev().cloned().collect::<Vec<_>>(),
        "own orders, newest first"
    );
    let paid = list(
        alice.token.clone(),
        String::new(),
        pb::OrderStatus::Paid,
        0,
        String::new(),
    )
    .await?;
    assert_eq!(paid.orders.len(), 2, "the cancelled one is filtered out");
    let cancelled = list(
        alice.token.clone(),
        String::new(),
        pb::OrderStatus::Cancelled,
        0,
        String::new(),
    )
    .await?;
    assert_eq!(cancelled.orders.iter().map(|o| &o.id).collect::<Vec<_>>(), [&alices[0]]);

    let page1 = list(
        alice.token.clone(),
        String::new(),
        pb::OrderStatus::Unspecified,
        2,
        String::new(),
    )
    .await?;
    assert_eq!(page1.orders.len(), 2);
    let page2 = list(
        alice.token.clone(),
        String::new(),
        pb::OrderStatus::Unspecified,
        2,
        page1.next_page_token,
    )
    .await?;
    assert_eq!(page2.orders.len(), 1);
    assert!(page2.next_page_token.is_empty());
    assert_eq!(page2.orders[0].id, alices[0]);

    let snooping = list(
        bob.token.clone(),
        alice.id.clone(),
        pb::OrderStatus::Unspecified,
        0,
        String::new(),
    )
    .await
    .expect_err("not Bob's to list");
    assert_eq!(snooping.code(), Code::PermissionDenied);
    let everyone = list(
        fx.admin.clone(),
        String::new(),
        pb::OrderStatus::Unspecified,
        0,
        String::new(),
    )
    .await?;
    assert_eq!(everyone.orders.len(), 4);
    assert_eq!(everyone.orders[0].id, bobs);
    let alice_only = list(
        fx.admin.clone(),
        alice.id.clone(),
        pb::OrderStatus::Unspecified,
        0,
        String::new(),
    )
    .await?;
    assert_eq!(alice_only.orders.len(), 3);
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_paid_order_refunds_it_and_returns_the_stock() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let tea = fx.product("Tea", 450, 10).await?;
    let buyer = fx.buyer(1_000).await?;
    let order = fx.order(&buyer, "buy", &[(&tea.id, 2)]).await?;
    assert_eq!(fx.balance(&buyer).await?, 100);
    let cancelled = fx.cancel(&buyer.token, &order.id, "cancel-1").await?;
    assert_eq!(cancelled.status, pb::OrderStatus::Cancelled as i32);
    assert_eq!(fx.balance(&buyer).await?, 1_000, "refunded in full");
    assert_eq!(fx.stock(&tea.id).await?, 10, "the units are back");
    assert_eq!(fx.stored_order(&order.id).await?.refund_state, RefundState::Done);

    let retry = fx.cancel(&buyer.token, &order.id, "cancel-1").await?;
    assert_eq!(retry.id, order.id);
    assert_eq!(fx.refunds_of(&order.id).await?, 1, "a retry refunds nothing more");
    let again = fx
        .cancel(&buyer.token, &order.id, "cancel-2")
        .await
        .expect_err("already cancelled");
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert_eq!(reason(&again), "ORDER_NOT_CANCELLABLE");
    assert_eq!(metadata(&again, "status").as_deref(), Some("CANCELLED"));
    assert_eq!(fx.balance(&buyer).await?, 1_000);

    // An admin may cancel anyone's order.
    let second = fx.order(&buyer, "buy-2", &[(&tea.id, 1)]).await?;
    let by_admin = fx.cancel(&fx.admin, &second.id, "admin-cancel").await?;
    assert_eq!(by_admin.status, pb::OrderStatus::Cancelled as i32);
    assert_eq!(fx.balance(&buyer).await?, 1_000);
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_ship_and_deliver_paid_orders_and_nothing_else() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let tea = fx.product("Tea", 450, 10).await?;
    let buyer = fx.buyer(10_000).await?;
    let order = fx.order(&buyer, "ship-me", &[(&tea.id, 1)]).await?;

    let by_user = fx.ship(&buyer.token, &order.id).await.expect_err("users do not ship");
    assert_eq!(by_user.code(), Code::PermissionDenied);
    let early = fx.deliver(&fx.admin, &order.id).await.expect_err("not shipped yet");
    assert_eq!(early.code(), Code::FailedPrecondition);
    assert_eq!(reason(&early), "INVALID_ORDER_STATUS");
    assert_eq!(metadata(&early, "status").as_deref(), Some("PAID"));

    let shipped = fx.ship(&fx.admin, &order.id).await?;
    assert_eq!(shipped.status, pb::OrderStatus::Shipped as i32);
    let again = fx.ship(&fx.admin, &order.id).await?;
    assert_eq!(
        (again.status, again.etag.clone()),
        (shipped.status, shipped.etag.clone()),
        "a retry changes nothing"
    );
    let late = fx
        .cancel(&buyer.token, &order.id, "too-late")
        .await
        .expect_err("shipped orders stay");
    assert_eq!(reason(&late), "ORDER_NOT_CANCELLABLE");
    assert_eq!(metadata(&late, "status").as_deref(), Some("SHIPPED"));

    let by_user = fx
        .deliver(&buyer.token, &order.id)
        .await
        .expect_err("users do not deliver");
    assert_eq!(by_user.code(), Code::PermissionDenied);
    let delivered = fx.deliver(&fx.admin, &order.id).await?;
    assert_eq!(delivered.status, pb::OrderStatus::Delivered as i32);
    assert_eq!(fx.deliver(&fx.admin, &order.id).await?.etag, delivered.etag);
    let reship = fx.ship(&fx.admin, &order.id).await.expect_err("delivered is final");
    assert_eq!(metadata(&reship, "status").as_deref(), Some("DELIVERED"));
    let cancel = fx.cancel(&fx.admin, &order.id, "after").await.expect_err("final");
    assert_eq!(reason(&cancel), "ORDER_NOT_CANCELLABLE");

    // A cancelled order goes nowhere either.
    let other = fx.order(&buyer, "cancel-me", &[(&tea.id, 1)]).await?;
    fx.cancel(&buyer.token, &other.id, "c").await?;
    for refused in [
        fx.ship(&fx.admin, &other.id).await,
        fx.deliver(&fx.admin, &other.id).await,
    ] {
        let refused = refused.expect_err("cancelled is final");
        assert_eq!(reason(&refused), "INVALID_ORDER_STATUS");
        assert_eq!(metadata(&refused, "status").as_deref(), Some("CANCELLED"));
    }
    let missing = fx
        .ship(&fx.admin, &uuid::Uuid::now_v7().to_string())
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);
    let malformed = fx.ship(&fx.admin, "x").await.expect_err("malformed");
    assert_eq!(violated_fields(&malformed), ["order_id"]);
    fx.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_change_announces_itself_in_the_outbox() -> anyhow::Result<()> {
    use diesel::QueryDsl as _;
    use diesel_async::RunQueryDsl as _;
    use keel_platform::events::outbox::outbox;

    let fx = fixture().await?;
    let tea = fx.product("Tea", 450, 10).await?;
    let buyer = fx.buyer(10_000).await?;
    let shipped = fx.order(&buyer, "one", &[(&tea.id, 1)]).await?;
    fx.ship(&fx.admin, &shipped.id).await?;
    let cancelled = fx.order(&buyer, "two", &[(&tea.id, 1)]).await?;
    fx.cancel(&buyer.token, &cancelled.id, "c").await?;
    let mut conn = fx.suite.db("orders").await?;
    let mut types: Vec<String> = outbox::table.select(outbox::event_type).load(&mut conn).await?;
    types.sort();
    assert_eq!(
        types,
        [
            "order.cancelled",
            "order.paid",
            "order.paid",
            "order.placed",
            "order.placed",
            "order.shipped"
        ]
    );
    fx.check_invariants().await
}
