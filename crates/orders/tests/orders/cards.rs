//! Card payments through an external gateway speaking Stripe's API (the
//! testkit's stand-in, over real HTTP): paid once, declined, 3-D Secure
//! finished by the webhook, and every way the gateway can misbehave —
//! 500s, timeouts, answers lost after the money moved, idempotency keys
//! ignored — ending with the order PAID and charged once, or CANCELLED with
//! its stock back and any charge refunded once.

use crate::common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::{Buyer, Fixture, fixture_with};
use http::{HeaderName, HeaderValue, Method, header::CONTENT_TYPE};
use keel::orders::v1::{self as pb, create_order_request::LineItem};
use keel_orders::status::{OrderStatus, PaymentMethod, RefundState};
use keel_testkit::{
    authorized,
    card_gateway::{CardGateway, Endpoint, Fault, SECRET_KEY, stripe_signature},
    http::TestGateway,
    proxy::DelayProxy,
    status::reason,
};
use tonic::{Code, Status};

const WEBHOOK_SECRET: &str = "whsec_keel_tests";
const PRICE: i64 = 1_250;

struct Cards {
    fx: Fixture,
    card: CardGateway,
    /// Between orders and the card gateway: delays replies when asked.
    proxy: DelayProxy,
    gateway: TestGateway,
    buyer: Buyer,
    product: pb::Product,
}

async fn cards() -> anyhow::Result<Cards> {
    cards_with(&[]).await
}

/// Cards with `extra` orders flags (which replace the defaults they name).
async fn cards_with(extra: &[&str]) -> anyhow::Result<Cards> {
    let card = CardGateway::start().await?;
    let proxy = DelayProxy::start(card.addr()).await?;
    let url = proxy.url();
    let defaults = [
        "--card-gateway-url",
        url.as_str(),
        "--card-gateway-secret-key",
        SECRET_KEY,
        "--card-webhook-secrets",
        WEBHOOK_SECRET,
        "--card-gateway-timeout-ms",
        "1000",
    ];
    let mut args: Vec<&str> = defaults
        .chunks(2)
        .filter(|pair| !extra.contains(&pair[0]))
        .flatten()
        .copied()
        .collect();
    args.extend(extra);
    let fx = fixture_with(&args).await?;
    let gateway = fx.suite.spawn_gateway(&[]).await?;
    card.send_webhooks_to(
        &format!("http://{}/v1/payments/stripe:webhook", gateway.addr()),
        WEBHOOK_SECRET,
    );
    let buyer = fx.buyer(0).await?;
    let product = fx.product("Kettle", PRICE, 10).await?;
    Ok(Cards {
        fx,
        card,
        proxy,
        gateway,
        buyer,
        product,
    })
}

impl Cards {
    async fn order(&self, request_id: &str, payment_method_id: &str) -> Result<pb::Order, Status> {
        self.order_at(self.fx.orders(), request_id, payment_method_id).await
    }

    /// CreateOrder through `orders` (one replica or another).
    async fn order_at(
        &self,
        mut orders: pb::orders_service_client::OrdersServiceClient<tonic::transport::Channel>,
        request_id: &str,
        payment_method_id: &str,
    ) -> Result<pb::Order, Status> {
        orders
            .create_order(authorized(
                pb::CreateOrderRequest {
                    request_id: request_id.into(),
                    items: vec![LineItem {
                        product_id: self.product.id.clone(),
                        quantity: 1,
                    }],
                    payment_method: pb::PaymentMethod::External as i32,
                    external_payment_method_id: payment_method_id.into(),
                },
                &self.buyer.token,
            ))
            .await
            .map(|r| r.into_inner().order.unwrap_or_default())
    }

    /// The stand-in's intents by the order they were made for.
    fn intents_of(&self, order_id: &str) -> Vec<keel_testkit::card_gateway::Intent> {
        self.card
            .intents()
            .into_iter()
            .filter(|i| i.metadata.get("order_id").map(String::as_str) == Some(order_id))
            .collect()
    }

    fn charges_of(&self, order_id: &str) -> usize {
        let ids: Vec<String> = self.intents_of(order_id).into_iter().map(|i| i.id).collect();
        self.card.charges().iter().filter(|c| ids.contains(c)).count()
    }

    fn refunds_of(&self, order_id: &str) -> Vec<i64> {
        let ids: Vec<String> = self.intents_of(order_id).into_iter().map(|i| i.id).collect();
        self.card
            .refunds()
            .into_iter()
            .filter(|r| ids.contains(&r.payment_intent))
            .map(|r| r.amount)
            .collect()
    }

    /// The stock invariant and the ledger (from the fixture), and for every
    /// card order: paid means charged once and never refunded; cancelled and
    /// settled means nothing taken, or taken once and refunded once in full.
    async fn check_invariants(&self) -> anyhow::Result<()> {
        self.fx.check_invariants().await?;
        let mut by_order: BTreeMap<String, (usize, Vec<i64>)> = BTreeMap::new();
        for intent in self.card.intents() {
            if let Some(order_id) = intent.metadata.get("order_id") {
                by_order.insert(order_id.clone(), (self.charges_of(order_id), self.refunds_of(order_id)));
            }
        }
        for (order_id, (charged, refunds)) in by_order {
            let order = self.fx.stored_order(&order_id).await?;
            assert_eq!(order.payment_method, PaymentMethod::External);
            assert!(charged <= 1, "order {order_id} charged {charged} times");
            match (order.status, order.refund_state) {
                (OrderStatus::Paid | OrderStatus::Shipped | OrderStatus::Delivered, _) => {
                    assert_eq!((charged, refunds.len()), (1, 0), "paid order {order_id}");
                }
                (OrderStatus::Cancelled, RefundState::Done) => {
                    assert_eq!((charged, refunds), (1, vec![order.total_minor]), "refunded {order_id}");
                }
                (OrderStatus::Cancelled, RefundState::NotNeeded) => {
                    assert_eq!((charged, refunds.len()), (0, 0), "unpaid cancelled {order_id}");
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn status_of(order: &pb::Order) -> pb::OrderStatus {
    pb::OrderStatus::try_from(order.status).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_card_order_is_paid_once_through_an_intent_created_unconfirmed_then_confirmed() -> anyhow::Result<()> {
    let c = cards().await?;
    let order = c.order("visa", "pm_card_visa").await?;
    assert_eq!(status_of(&order), pb::OrderStatus::Paid);
    assert_eq!(c.fx.stock(&c.product.id).await?, 9);

    let intents = c.intents_of(&order.id);
    assert_eq!(intents.len(), 1);
    assert_eq!((intents[0].amount, intents[0].currency.as_str()), (PRICE, "usd"));
    assert_eq!(c.charges_of(&order.id), 1);
    let posts: Vec<(String, Option<String>)> = c
        .card
        .requests()
        .into_iter()
        .filter(|(method, _, _)| method == "POST")
        .map(|(_, path, key)| (path, key))
        .collect();
    let charge = format!("order:{}:charge", order.id);
    assert_eq!(
        posts,
        vec![
            ("/v1/payment_intents".to_owned(), Some(format!("{charge}:create"))),
            (
                format!("/v1/payment_intents/{}/confirm", intents[0].id),
                Some(format!("{charge}:confirm"))
            ),
        ],
        "created unconfirmed, then confirmed, each POST with its own key"
    );
    let stored = c.fx.stored_order(&order.id).await?;
    assert_eq!(stored.charge_reference.as_deref(), Some(intents[0].id.as_str()));

    // A retry of the same request is the same order and no second charge.
    let again = c.order("visa", "pm_card_visa").await?;
    assert_eq!(again.id, order.id);
    assert_eq!(c.charges_of(&order.id), 1);
    c.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declined_card_cancels_the_order_and_releases_the_stock() -> anyhow::Result<()> {
    let c = cards().await?;
    for (request_id, method) in [
        ("declined", "pm_card_chargeCustomerFail"),
        ("no-funds", "pm_card_chargeDeclinedInsufficientFunds"),
    ] {
        let refused = c.order(request_id, method).await.expect_err("declined");
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert_eq!(reason(&refused), "PAYMENT_DECLINED");
        let order_id = keel_testkit::status::metadata(&refused, "order_id").expect("the order is named");
        let order = c.fx.stored_order(&order_id).await?;
        assert_eq!(
            (order.status, order.cancel_reason.as_deref()),
            (OrderStatus::Cancelled, Some("PAYMENT_DECLINED"))
        );
        assert_eq!(c.charges_of(&order_id), 0);
    }
    assert_eq!(c.fx.stock(&c.product.id).await?, 10, "all stock back");

    // Input the contract refuses before anything is reserved.
    let missing = c.order("no-method", "").await.expect_err("no payment method");
    assert_eq!(missing.code(), Code::InvalidArgument);
    let odd = c.order("odd", "pm card visa").await.expect_err("not an id");
    assert_eq!(odd.code(), Code::InvalidArgument);
    c.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn three_d_secure_keeps_the_order_pending_until_the_webhook_says_how_it_ended() -> anyhow::Result<()> {
    // The resumer looks only at start: whatever settles these orders is the
    // webhook.
    let c = cards_with(&["--resume-interval-ms", "600000"]).await?;
    let order = c.order("3ds", "pm_card_threeDSecure2Required").await?;
    assert_eq!(status_of(&order), pb::OrderStatus::PendingPayment);
    let intent = c.intents_of(&order.id).remove(0);
    assert_eq!(intent.status, "requires_action");
    assert_eq!(c.fx.stock(&c.product.id).await?, 9, "reserved meanwhile");

    // The buyer authenticates; the gateway's signed webhook pays the order.
    c.card.authenticate(&intent.id, true).await?;
    let paid = c.fx.settled(&order.id, |o| o.status == OrderStatus::Paid).await?;
    assert_eq!(paid.charge_reference.as_deref(), Some(intent.id.as_str()));
    assert_eq!(c.charges_of(&order.id), 1);

    // A failed authentication cancels the next one and gives its stock back.
    let failing = c.order("3ds-fails", "pm_card_threeDSecure2Required").await?;
    let intent = c.intents_of(&failing.id).remove(0);
    c.card.authenticate(&intent.id, false).await?;
    let cancelled =
        c.fx.settled(&failing.id, |o| o.status == OrderStatus::Cancelled)
            .await?;
    assert_eq!(cancelled.cancel_reason.as_deref(), Some("PAYMENT_DECLINED"));
    assert_eq!(c.fx.stock(&c.product.id).await?, 9);
    c.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_are_verified_on_the_raw_body_and_a_replay_changes_nothing() -> anyhow::Result<()> {
    let c = cards().await?;
    let order = c.order("3ds", "pm_card_threeDSecure2Required").await?;
    let intent = c.intents_of(&order.id).remove(0);
    let http = c.gateway.http();
    let path = "/v1/payments/stripe:webhook";
    let event = serde_json::json!({
        "id": "evt_forged",
        "type": "payment_intent.succeeded",
        "data": { "object": { "id": intent.id, "metadata": { "order_id": order.id } } },
    })
    .to_string();
    let now = chrono_now();
    for signature in [
        None,
        Some(stripe_signature("whsec_someone_else", now, &event)?),
        Some(stripe_signature(WEBHOOK_SECRET, now - 301, &event)?),
        Some(format!("t={now},v1=00")),
    ] {
        let mut headers = vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
        if let Some(signature) = &signature {
            headers.push((HeaderName::from_static("stripe-signature"), signature.parse()?));
        }
        let response = http
            .send(Method::POST, path, None, &headers, Bytes::from(event.clone()))
            .await?;
        assert_eq!(response.status, 401, "{signature:?}: {}", response.json());
        let details = response.json()["details"].clone();
        assert!(
            details
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| d["reason"] == "BAD_SIGNATURE"),
            "{details}"
        );
    }
    // Even a correctly signed event is only a hint: the intent still needs
    // the buyer, so the order stays unpaid.
    let signed = stripe_signature(WEBHOOK_SECRET, now, &event)?;
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static("application/json")),
        (HeaderName::from_static("stripe-signature"), signed.parse()?),
    ];
    let response = http
        .send(Method::POST, path, None, &headers, Bytes::from(event.clone()))
        .await?;
    assert_eq!(response.status, 200, "{}", response.json());
    assert_eq!(c.fx.stored_order(&order.id).await?.status, OrderStatus::PendingPayment);
    assert_eq!(c.charges_of(&order.id), 0);

    c.card.authenticate(&intent.id, true).await?;
    c.fx.settled(&order.id, |o| o.status == OrderStatus::Paid).await?;
    let before = c.fx.stored_order(&order.id).await?;
    // Stripe redelivers: the same event again changes nothing.
    assert_eq!(
        c.card
            .send_event("evt_again", "payment_intent.succeeded", &intent.id)
            .await?,
        200
    );
    assert_eq!(
        c.card
            .send_event("evt_again", "payment_intent.succeeded", &intent.id)
            .await?,
        200
    );
    let after = c.fx.stored_order(&order.id).await?;
    assert_eq!((after.status, after.version), (before.status, before.version));
    assert_eq!(c.charges_of(&order.id), 1);
    c.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_gateway_failure_ends_paid_once_or_cancelled_with_nothing_taken() -> anyhow::Result<()> {
    let c = cards().await?;
    let cases = [
        ("create-500", Endpoint::CreateIntent, Fault::ServerError),
        ("create-timeout", Endpoint::CreateIntent, Fault::Hang),
        ("create-lost", Endpoint::CreateIntent, Fault::LoseResponse),
        ("confirm-500", Endpoint::ConfirmIntent, Fault::ServerError),
        ("confirm-timeout", Endpoint::ConfirmIntent, Fault::Hang),
        ("confirm-lost", Endpoint::ConfirmIntent, Fault::LoseResponse),
    ];
    for (request_id, endpoint, fault) in cases {
        c.card.fail_next(endpoint, fault);
        let order = c.order(request_id, "pm_card_visa").await?;
        // The outcome is unknown, so it waits, unless the resumer finished
        // it while the call hung (the hold is shorter than the timeout).
        assert!(
            [pb::OrderStatus::PendingPayment, pb::OrderStatus::Paid].contains(&status_of(&order)),
            "{request_id}: {:?}",
            status_of(&order)
        );
        let paid = c.fx.settled(&order.id, |o| o.status == OrderStatus::Paid).await?;
        assert!(paid.charge_reference.is_some(), "{request_id}");
        assert_eq!(c.charges_of(&order.id), 1, "{request_id}: charged exactly once");
    }
    c.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn keel_charges_once_even_when_the_gateway_ignores_idempotency_keys() -> anyhow::Result<()> {
    let c = cards().await?;
    c.card.ignore_idempotency_keys();
    // The intent is made but its id never reaches Keel: the resumer makes
    // another and confirms only the one it stored.
    c.card.fail_next(Endpoint::CreateIntent, Fault::LoseResponse);
    let order = c.order("lost-create", "pm_card_visa").await?;
    c.fx.settled(&order.id, |o| o.status == OrderStatus::Paid).await?;
    assert_eq!(
        c.intents_of(&order.id).len(),
        2,
        "a second intent, never a second charge"
    );
    assert_eq!(c.charges_of(&order.id), 1);

    // The confirmation's answer is lost: the resumer reads the intent rather
    // than confirming again.
    c.card.fail_next(Endpoint::ConfirmIntent, Fault::LoseResponse);
    let order = c.order("lost-confirm", "pm_card_visa").await?;
    c.fx.settled(&order.id, |o| o.status == OrderStatus::Paid).await?;
    assert_eq!(c.charges_of(&order.id), 1);

    // A refund's answer is lost: the retry finds the refund by its key.
    let paid = c.order("refund-lost", "pm_card_visa").await?;
    c.card.fail_next(Endpoint::CreateRefund, Fault::LoseResponse);
    let cancelled = c.fx.cancel(&c.buyer.token, &paid.id, "cancel-1").await?;
    assert_eq!(status_of(&cancelled), pb::OrderStatus::Cancelled);
    c.fx.settled(&paid.id, |o| o.refund_state == RefundState::Done).await?;
    assert_eq!(c.refunds_of(&paid.id), vec![PRICE], "refunded once");
    c.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_paid_card_order_refunds_it_once_and_an_unfinished_one_voids_its_intent() -> anyhow::Result<()> {
    let c = cards().await?;
    let paid = c.order("paid", "pm_card_visa").await?;
    let cancelled = c.fx.cancel(&c.buyer.token, &paid.id, "cancel-paid").await?;
    assert_eq!(status_of(&cancelled), pb::OrderStatus::Cancelled);
    c.fx.settled(&paid.id, |o| o.refund_state == RefundState::Done).await?;
    // A retried cancel changes nothing.
    c.fx.cancel(&c.buyer.token, &paid.id, "cancel-paid").await?;
    assert_eq!(c.refunds_of(&paid.id), vec![PRICE]);

    // Cancelled while waiting for 3-D Secure: the intent is cancelled at the
    // gateway, so a late authentication cannot take the money.
    let waiting = c.order("waiting", "pm_card_threeDSecure2Required").await?;
    let intent = c.intents_of(&waiting.id).remove(0);
    c.fx.cancel(&c.buyer.token, &waiting.id, "cancel-waiting").await?;
    c.fx.settled(&waiting.id, |o| o.refund_state == RefundState::NotNeeded)
        .await?;
    let voided = c.intents_of(&waiting.id).remove(0);
    assert_eq!(
        (voided.id.as_str(), voided.status.as_str()),
        (intent.id.as_str(), "canceled")
    );
    assert!(c.card.authenticate(&intent.id, true).await.is_err(), "too late");
    assert_eq!(c.charges_of(&waiting.id), 0);
    assert_eq!(c.fx.stock(&c.product.id).await?, 10);
    c.check_invariants().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_unpaid_past_its_deadline_is_cancelled_and_its_intent_voided() -> anyhow::Result<()> {
    let c = cards_with(&["--payment-deadline-secs", "1"]).await?;
    let order = c.order("abandoned", "pm_card_threeDSecure2Required").await?;
    let cancelled =
        c.fx.settled(&order.id, |o| {
            o.status == OrderStatus::Cancelled && o.refund_state == RefundState::NotNeeded
        })
        .await?;
    assert!(cancelled.cancel_reason.is_some());
    assert_eq!(c.intents_of(&order.id)[0].status, "canceled");
    assert_eq!(c.fx.stock(&c.product.id).await?, 10);
    c.check_invariants().await
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// The stored order placed with `request_id`, once it exists.
async fn placed(fx: &Fixture, request_id: &str) -> anyhow::Result<keel_orders::store::orders::OrderRow> {
    use diesel::{ExpressionMethods as _, QueryDsl as _, SelectableHelper as _};
    use diesel_async::RunQueryDsl as _;
    use keel_orders::{schema::orders, store::orders::OrderRow};
    let mut conn = fx.suite.db("orders").await?;
    for _ in 0..200 {
        let found = orders::table
            .filter(orders::request_id.eq(request_id))
            .select(OrderRow::as_select())
            .first(&mut conn)
            .await;
        if let Ok(order) = found {
            return Ok(order);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    anyhow::bail!("no order {request_id} was placed")
}

/// Sequence 1 of "money moves exactly once": the buyer cancels while the
/// card intent is being created (the gateway answers after 1.5 s). The
/// cancel is honoured: the intent that turns up is never confirmed, nothing
/// is charged, and nothing is charged later either.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_while_the_intent_is_created_charges_nothing_ever() -> anyhow::Result<()> {
    for ignore_keys in [false, true] {
        let c = cards_with(&["--payment-lease-ms", "5000", "--card-gateway-timeout-ms", "4000"]).await?;
        if ignore_keys {
            c.card.ignore_idempotency_keys();
        }
        c.proxy.delay_replies(std::time::Duration::from_millis(1500));
        let cancel = async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let order = placed(&c.fx, "slow-create").await?;
            let cancelled = c.fx.cancel(&c.buyer.token, &order.id.to_string(), "cancel-1").await?;
            anyhow::Ok(cancelled)
        };
        let (created, cancelled) = tokio::join!(c.order("slow-create", "pm_card_visa"), cancel);
        let (created, cancelled) = (created?, cancelled?);
        assert_eq!(status_of(&cancelled), pb::OrderStatus::Cancelled);
        assert_eq!(
            status_of(&created),
            pb::OrderStatus::Cancelled,
            "CreateOrder answers the order as the cancel left it"
        );
        c.proxy.delay_replies(std::time::Duration::ZERO);
        // Whatever the resumer would do, it has had time to.
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
        let stored = c.fx.stored_order(&created.id).await?;
        assert_eq!(
            (stored.status, stored.refund_state, stored.payment_state),
            (
                OrderStatus::Cancelled,
                RefundState::NotNeeded,
                keel_orders::status::PaymentState::Voided
            )
        );
        assert_eq!(c.charges_of(&created.id), 0, "ignore_keys={ignore_keys}: never charged");
        assert!(
            c.intents_of(&created.id).iter().all(|i| i.status != "succeeded"),
            "no intent was confirmed"
        );
        c.check_invariants().await?;
    }
    Ok(())
}

/// Sequence 2: two orders replicas on one database, a gateway that ignores
/// idempotency keys, and calls that take longer than the hold on an order:
/// the replicas' workers overtake each other, yet each order is charged
/// exactly once, through the one intent Keel stored.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_and_calls_longer_than_the_hold_charge_each_order_once() -> anyhow::Result<()> {
    let c = cards_with(&[
        "--payment-lease-ms",
        "400",
        "--resume-interval-ms",
        "100",
        "--card-gateway-timeout-ms",
        "5000",
    ])
    .await?;
    c.card.ignore_idempotency_keys();
    let replica = c.fx.suite.spawn_replica("orders").await?;
    c.proxy.delay_replies(std::time::Duration::from_millis(1000));
    let placing = (0..6).map(|i| {
        let orders = if i % 2 == 0 {
            c.fx.orders()
        } else {
            pb::orders_service_client::OrdersServiceClient::new(replica.channel.clone())
        };
        let c = &c;
        async move { c.order_at(orders, &format!("slow-{i}"), "pm_card_visa").await }
    });
    let placed: Vec<pb::Order> = futures::future::join_all(placing)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    c.proxy.delay_replies(std::time::Duration::ZERO);
    for order in &placed {
        let paid = c.fx.settled(&order.id, |o| o.status == OrderStatus::Paid).await?;
        assert_eq!(c.charges_of(&order.id), 1, "order {} charged once", order.id);
        let charged: Vec<_> = c
            .intents_of(&order.id)
            .into_iter()
            .filter(|i| i.status == "succeeded")
            .map(|i| i.id)
            .collect();
        assert_eq!(
            charged,
            paid.charge_reference.into_iter().collect::<Vec<_>>(),
            "the charged intent is the one Keel stored"
        );
    }
    c.check_invariants().await?;
    replica.stop().await
}

/// Reconciliation finds money the gateway holds that no order may keep (a
/// charge planted outside Keel for an order cancelled as never charged, and
/// a second charge of a paid order) and refunds it with the order's refund
/// key, once, counting each repair.
#[tokio::test(flavor = "multi_thread")]
async fn reconciliation_refunds_charges_no_order_may_keep() -> anyhow::Result<()> {
    let c = cards_with(&["--reconcile-interval-secs", "1"]).await?;
    let paid = c.order("kept", "pm_card_visa").await?;
    assert_eq!(status_of(&paid), pb::OrderStatus::Paid);
    let declined = c.order("declined", "pm_card_chargeCustomerFail").await;
    assert!(declined.is_err(), "the card is declined");
    let cancelled = placed(&c.fx, "declined").await?;
    let orphan = c.card.plant_charge(&cancelled.id.to_string(), PRICE, "usd");
    let second = c.card.plant_charge(&paid.id, PRICE, "usd");

    let refunded = |intent: String| {
        let card = c.card.clone();
        move || card.refunds().iter().any(|r| r.payment_intent == intent)
    };
    let (orphan_refunded, second_refunded) = (refunded(orphan.clone()), refunded(second.clone()));
    for _ in 0..100 {
        if orphan_refunded() && second_refunded() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(orphan_refunded(), "the orphan charge is refunded");
    assert!(second_refunded(), "the second charge of the paid order is refunded");
    // A few more passes find nothing left to repair.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let refunds = c.card.refunds();
    for intent in [&orphan, &second] {
        let of_it: Vec<_> = refunds.iter().filter(|r| &r.payment_intent == intent).collect();
        assert_eq!(of_it.len(), 1, "{intent} refunded once");
        assert_eq!(of_it[0].amount, PRICE);
    }
    let paid_after = c.fx.stored_order(&paid.id).await?;
    assert_eq!(
        paid_after.status,
        OrderStatus::Paid,
        "the paid order keeps its own charge"
    );
    assert!(
        !refunds
            .iter()
            .any(|r| Some(&r.payment_intent) == paid_after.charge_reference.as_ref()),
        "its own charge is not refunded"
    );
    let metrics = keel_testkit::metrics::scrape(&c.fx.suite.metrics_url("orders")?).await?;
    assert_eq!(
        metrics.value("keel_payment_repairs_total", &[("kind", "orphan_charge")]),
        1.0
    );
    assert_eq!(
        metrics.value("keel_payment_repairs_total", &[("kind", "several_charges")]),
        1.0
    );
    Ok(())
}
