//! One order through the gateway makes one trace: the gateway's request,
//! orders' CreateOrder, accounts' Debit, each outbox write, the relay's
//! delivery and notifications' handling of the event, each under the span
//! that caused it, exported over OTLP to the testkit's receiver; so do a
//! charge the resumer makes later and the calls to the card gateway.
//!
//! The subscriber is process-wide, so this binary holds this one test.

use crate::common;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use common::{Buyer, fixture, fixture_with};
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use keel_platform::{
    config::{LogFormat, TelemetryConfig},
    serve::telemetry::{self, TelemetryGuard},
};
use keel_testkit::{
    card_gateway::{CardGateway, SECRET_KEY},
    http::TestGateway,
    otlp::{ReceivedSpan, TraceReceiver},
};
use uuid::Uuid;

/// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

#[tokio::test(flavor = "multi_thread")]
async fn an_order_through_the_gateway_is_one_connected_trace() -> anyhow::Result<()> {
    let receiver = TraceReceiver::start().await?;
    let config = TelemetryConfig {
        log_format: LogFormat::Pretty,
        // Keel's spans on, and few log lines: the spans are all made in
        // these modules, at INFO.
        log_filter: "warn,keel_platform::serve::telemetry=info,keel_platform::events::outbox=info,\
                     keel_platform::events::relay=info,keel_platform::events=info,keel_orders=info"
            .into(),
        otlp_endpoint: Some(receiver.endpoint()),
    };
    let guard = telemetry::init("keel", &config)?;

    let fx = fixture().await?;
    let gateway = fx.suite.spawn_gateway(&[]).await?;
    let tea = fx.product("Green tea", 450, 10).await?;
    let buyer = fx.buyer(2_000).await?;

    // The caller's own span: the gateway's request continues it.
    let (trace_id, caller_span) = new_trace();
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let placed = place_order(&gateway, &buyer, &tea.id, "traced-1", &traceparent).await?;
    assert_eq!(placed["order"]["status"], "ORDER_STATUS_PAID", "{placed}");

    let spans = wait_for_trace(&guard, &receiver, &trace_id, |spans| {
        let consumed = consumed(spans);
        ["order.placed", "order.paid", "balance.changed"]
            .iter()
            .all(|wanted| consumed.contains(wanted))
    })
    .await?;
    let trace = Trace(&spans);

    let request = trace.one("the gateway's request", |s| {
        s.attribute("keel.service") == Some("gateway") && s.attribute("path") == Some("/v1/orders")
    })?;
    assert_eq!(request.kind, SERVER);
    assert_eq!(request.parent_span_id.as_deref(), Some(caller_span.as_str()));
    assert_eq!(request.resource.get("service.name").map(String::as_str), Some("keel"));
    assert_eq!(
        request.resource.get("service.version").map(String::as_str),
        Some(telemetry::SERVICE_VERSION)
    );

    let create = trace.one("orders' CreateOrder", |s| {
        s.attribute("keel.service") == Some("orders") && s.attribute("rpc.method") == Some("CreateOrder")
    })?;
    assert_eq!(create.name, "keel.orders.v1.OrdersService/CreateOrder");
    assert_eq!(create.kind, SERVER);
    trace.child_of(create, request)?;

    let debit = trace.one("accounts' Debit", |s| {
        s.attribute("keel.service") == Some("accounts") && s.attribute("rpc.method") == Some("Debit")
    })?;
    trace.child_of(debit, create)?;

    // Each event orders wrote, from the write to notifications' effect.
    for event_type in ["order.placed", "order.paid"] {
        let enqueue = trace.one(&format!("the {event_type} outbox write"), |s| {
            s.name == "outbox.enqueue" && s.attribute("event.type") == Some(event_type)
        })?;
        assert_eq!(enqueue.kind, PRODUCER);
        trace.child_of(enqueue, create)?;

        let relay = trace.one(&format!("the {event_type} relay"), |s| {
            s.name == "outbox.relay" && s.attribute("event.type") == Some(event_type)
        })?;
        assert_eq!(relay.attribute("keel.service"), Some("orders"));
        trace.child_of(relay, enqueue)?;

        let consume = trace.one(&format!("notifications' {event_type}"), |s| {
            s.name == "event.consume"
                && s.attribute("keel.service") == Some("notifications")
                && s.attribute("event.type") == Some(event_type)
        })?;
        assert_eq!(consume.kind, CONSUMER);
        let deliver = trace.parent(consume)?;
        assert_eq!(deliver.attribute("keel.service"), Some("notifications"));
        assert_eq!(deliver.name, "keel.events.v1.EventSink/Deliver");
        trace.child_of(deliver, relay)?;
        assert_eq!(
            consume.links,
            vec![(trace_id.clone(), enqueue.span_id.clone())],
            "the consumer links to the producer's span"
        );
    }

    // Accounts' own event (the balance it debited) goes the same way.
    let balance_write = trace.one("accounts' outbox write", |s| {
        s.name == "outbox.enqueue" && s.attribute("keel.service") == Some("accounts")
    })?;
    trace.child_of(balance_write, debit)?;

    gateway.stop().await?;
    fx.check_invariants().await?;

    a_resumed_order_stays_in_its_trace(&guard, &receiver).await?;
    a_card_charge_is_in_the_order_s_trace(&guard, &receiver).await
}

/// An order paid by card: each call to the card gateway is a client span
/// under CreateOrder, and carries that span's context in `traceparent`.
async fn a_card_charge_is_in_the_order_s_trace(guard: &TelemetryGuard, receiver: &TraceReceiver) -> anyhow::Result<()> {
    let card = CardGateway::start().await?;
    let url = card.url();
    let fx = fixture_with(&[
        "--card-gateway-url",
        url.as_str(),
        "--card-gateway-secret-key",
        SECRET_KEY,
    ])
    .await?;
    let gateway = fx.suite.spawn_gateway(&[]).await?;
    let kettle = fx.product("Kettle", 2_500, 10).await?;
    let buyer = fx.buyer(0).await?;

    let (trace_id, caller_span) = new_trace();
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let body = serde_json::json!({
        "requestId": "card-1",
        "items": [{"productId": kettle.id, "quantity": 1}],
        "paymentMethod": "PAYMENT_METHOD_EXTERNAL",
        "externalPaymentMethodId": "pm_card_visa",
    });
    let placed = send_order(&gateway, &buyer, &body, &traceparent).await?;
    assert_eq!(placed["order"]["status"], "ORDER_STATUS_PAID", "{placed}");

    let calls = card.traceparents().len();
    anyhow::ensure!(calls > 0, "the card gateway was not called");
    let spans = wait_for_trace(guard, receiver, &trace_id, |spans| {
        spans.iter().filter(|s| s.name == "card_gateway").count() == calls
    })
    .await?;
    let trace = Trace(&spans);
    let create = trace.one("orders' CreateOrder", |s| {
        s.attribute("rpc.method") == Some("CreateOrder")
    })?;
    for sent in card.traceparents() {
        let sent = sent.context("a card gateway call without traceparent")?;
        let span_id = sent.split('-').nth(2).context("a malformed traceparent")?;
        let call = trace.one("the card gateway call", |s| s.span_id == span_id)?;
        assert_eq!(call.name, "card_gateway");
        assert_eq!(call.kind, CLIENT);
        assert_eq!(call.attribute("http.response.status_code"), Some("200"));
        assert_eq!(sent.split('-').nth(1), Some(trace_id.as_str()));
        trace.child_of(call, create)?;
    }

    gateway.stop().await?;
    fx.check_invariants().await
}

/// An order whose charge the resumer makes (orders "crashed" after the
/// reservation): the resumed step, its Debit and its OrderPaid are in the
/// trace of the call that placed the order.
async fn a_resumed_order_stays_in_its_trace(guard: &TelemetryGuard, receiver: &TraceReceiver) -> anyhow::Result<()> {
    let fx = fixture_with(&["--test-crash-after", "reservation"]).await?;
    let gateway = fx.suite.spawn_gateway(&[]).await?;
    let tea = fx.product("Green tea", 450, 10).await?;
    let buyer = fx.buyer(2_000).await?;

    let (trace_id, caller_span) = new_trace();
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let placed = place_order(&gateway, &buyer, &tea.id, "resumed-1", &traceparent).await?;
    assert_eq!(placed["order"]["status"], "ORDER_STATUS_PENDING_PAYMENT", "{placed}");

    let spans = wait_for_trace(guard, receiver, &trace_id, |spans| {
        consumed(spans).contains(&"order.paid")
    })
    .await?;
    let trace = Trace(&spans);
    let create = trace.one("orders' CreateOrder", |s| {
        s.attribute("rpc.method") == Some("CreateOrder")
    })?;
    let resume = trace.one("the resumed step", |s| s.name == "order.resume")?;
    assert_eq!(resume.attribute("keel.service"), Some("orders"));
    trace.child_of(resume, create)?;
    let debit = trace.one("accounts' Debit", |s| s.attribute("rpc.method") == Some("Debit"))?;
    trace.child_of(debit, resume)?;
    let paid = trace.one("the order.paid outbox write", |s| {
        s.name == "outbox.enqueue" && s.attribute("event.type") == Some("order.paid")
    })?;
    trace.child_of(paid, resume)?;

    gateway.stop().await?;
    fx.check_invariants().await
}

/// A fresh trace id and a caller's span id in it (hex).
fn new_trace() -> (String, String) {
    let trace_id = Uuid::now_v7().simple().to_string();
    let span_id = Uuid::now_v7().simple().to_string()[16..].to_owned();
    (trace_id, span_id)
}

/// POST /v1/orders for two of `product_id`, paid from the balance, sent
/// with `traceparent`.
async fn place_order(
    gateway: &TestGateway,
    buyer: &Buyer,
    product_id: &str,
    request_id: &str,
    traceparent: &str,
) -> anyhow::Result<serde_json::Value> {
    let body = serde_json::json!({
        "requestId": request_id,
        "items": [{"productId": product_id, "quantity": 2}],
        "paymentMethod": "PAYMENT_METHOD_ACCOUNT_BALANCE",
    });
    send_order(gateway, buyer, &body, traceparent).await
}

/// POST /v1/orders with `body`, sent with `traceparent`.
async fn send_order(
    gateway: &TestGateway,
    buyer: &Buyer,
    body: &serde_json::Value,
    traceparent: &str,
) -> anyhow::Result<serde_json::Value> {
    let placed = gateway
        .http()
        .send(
            Method::POST,
            "/v1/orders",
            Some(&buyer.token),
            &[
                (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (
                    HeaderName::from_static("traceparent"),
                    HeaderValue::from_str(traceparent)?,
                ),
            ],
            Bytes::from(body.to_string()),
        )
        .await?;
    anyhow::ensure!(placed.status == StatusCode::OK, "{:?}", placed.json());
    Ok(placed.json())
}

/// The event types notifications' consumer spans in `spans` applied.
fn consumed(spans: &[ReceivedSpan]) -> Vec<&str> {
    spans
        .iter()
        .filter(|s| s.name == "event.consume" && s.attribute("keel.service") == Some("notifications"))
        .filter_map(|s| s.attribute("event.type"))
        .collect()
}

/// Waits until the trace `trace_id` is `complete` (the relay and the
/// consumer finish after the response), flushing the exporter each time.
async fn wait_for_trace(
    guard: &TelemetryGuard,
    receiver: &TraceReceiver,
    trace_id: &str,
    complete: impl Fn(&[ReceivedSpan]) -> bool,
) -> anyhow::Result<Vec<ReceivedSpan>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Flushing blocks until the exporter has sent what had ended.
        tokio::task::block_in_place(|| guard.flush())?;
        let spans = receiver.trace(trace_id);
        if complete(&spans) {
            return Ok(spans);
        }
        if Instant::now() > deadline {
            let names: Vec<_> = spans
                .iter()
                .map(|s| format!("{} {:?}", s.name, s.attribute("event.type")))
                .collect();
            anyhow::bail!("the trace is incomplete after 30 s: {names:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The spans of one trace.
struct Trace<'a>(&'a [ReceivedSpan]);

impl<'a> Trace<'a> {
    /// The one span that `matches`.
    fn one(&self, what: &str, matches: impl Fn(&ReceivedSpan) -> bool) -> anyhow::Result<&'a ReceivedSpan> {
        let found: Vec<_> = self.0.iter().filter(|s| matches(s)).collect();
        match found.as_slice() {
            [span] => Ok(span),
            _ => anyhow::bail!("{} spans for {what}: {:#?}", found.len(), self.0),
        }
    }

    /// `span`'s parent, which must be in the trace.
    fn parent(&self, span: &ReceivedSpan) -> anyhow::Result<&'a ReceivedSpan> {
        let parent = span.parent_span_id.as_deref().context("a root span")?;
        self.0
            .iter()
            .find(|s| s.span_id == parent)
            .with_context(|| format!("the parent of {} is not in the trace", span.name))
    }

    fn child_of(&self, child: &ReceivedSpan, parent: &ReceivedSpan) -> anyhow::Result<()> {
        anyhow::ensure!(
            child.parent_span_id.as_deref() == Some(parent.span_id.as_str()),
            "{} ({:?}) is not a child of {} ({:?})",
            child.name,
            child.attributes,
            parent.name,
            parent.attributes
        );
        Ok(())
    }
}
