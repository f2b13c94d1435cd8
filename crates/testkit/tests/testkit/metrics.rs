//! Every service and the gateway serve Prometheus metrics on a listener of
//! their own; known traffic moves exactly the series it should: a call
//! under its method and code, a request under its route template.

use std::time::Duration;

use keel::auth::v1 as pb;
use keel_testkit::{
    metrics::{Scrape, scrape, scrape_accepting},
    spawn_suite,
};

const REQUESTS: &str = "keel_rpc_requests_total";
const DURATIONS: &str = "keel_rpc_duration_seconds_count";
const HTTP_REQUESTS: &str = "keel_http_requests_total";

fn register(email: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        email: email.into(),
        password: "a perfectly fine password".into(),
    }
}

fn calls(scrape: &Scrape, method: &str, code: &str) -> f64 {
    scrape.value(REQUESTS, &[("service", "auth"), ("method", method), ("code", code)])
}

#[tokio::test(flavor = "multi_thread")]
async fn rpc_calls_are_counted_by_method_and_code() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let url = suite.metrics_url("auth")?;
    let before = scrape(&url).await?;

    let mut auth = suite.auth();
    for n in 0..2 {
        auth.register(register(&format!(
            "metrics-{n}-{}@example.com",
            uuid::Uuid::now_v7().simple()
        )))
        .await?;
    }
    for _ in 0..3 {
        let refused = auth
            .register(register("not an address"))
            .await
            .expect_err("a bad email");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    }

    let after = scrape(&url).await?;
    let register = "AuthService/Register";
    assert_eq!(calls(&after, register, "OK") - calls(&before, register, "OK"), 2.0);
    assert_eq!(
        calls(&after, register, "INVALID_ARGUMENT") - calls(&before, register, "INVALID_ARGUMENT"),
        3.0
    );
    let timed = |scrape: &Scrape| scrape.value(DURATIONS, &[("service", "auth"), ("method", register)]);
    assert_eq!(timed(&after) - timed(&before), 5.0);
    // Nothing else was counted under Register.
    let all = |scrape: &Scrape| scrape.value(REQUESTS, &[("method", register)]);
    assert_eq!(all(&after) - all(&before), 5.0);
    // The other services' revocation feeds are streams open for the whole
    // run: counted when they end, never timed.
    let watch = [("method", "AuthService/WatchRevocations")];
    assert_eq!(after.matching(DURATIONS, &watch).count(), 0, "{}", after.text);
    // A method nobody serves can't mint a label.
    assert!(
        after
            .matching(REQUESTS, &[])
            .all(|s| !s.labels["method"].contains("keel.")),
        "{}",
        after.text
    );

    // The classic text format by default: what promtool and curl read.
    assert!(
        after.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        after.content_type
    );
    assert!(
        after.text.contains("# TYPE keel_rpc_requests_total counter"),
        "{}",
        after.text
    );
    assert!(!after.text.contains("# EOF"));
    // OpenMetrics to a scraper that asks for it, as Prometheus does.
    let openmetrics = scrape_accepting(&url, "application/openmetrics-text;version=1.0.0,text/plain;q=0.5").await?;
    assert!(openmetrics.content_type.starts_with("application/openmetrics-text"));
    assert!(openmetrics.text.ends_with("# EOF\n"), "{}", openmetrics.text);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_requests_are_counted_by_route_template() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    let gateway = suite.spawn_gateway(&[]).await?;
    let url = gateway.metrics_url();
    let before = scrape(&url).await?;

    for _ in 0..2 {
        assert_eq!(gateway.http().get("/v1/auth/jwks", None).await?.status, 200);
    }
    let account = uuid::Uuid::now_v7();
    for _ in 0..3 {
        let refused = gateway.http().get(&format!("/v1/accounts/{account}"), None).await?;
        assert_eq!(refused.status, 401);
    }
    assert_eq!(gateway.http().get("/v1/no-such-route/42", None).await?.status, 404);

    let after = scrape(&url).await?;
    let moved = |route: &str, status: &str| {
        let labels = [("route", route), ("method", "GET"), ("status", status)];
        after.value(HTTP_REQUESTS, &labels) - before.value(HTTP_REQUESTS, &labels)
    };
    assert_eq!(moved("/v1/auth/jwks", "200"), 2.0);
    assert_eq!(moved("/v1/accounts/{account_id}", "401"), 3.0);
    assert_eq!(moved("unmatched", "404"), 1.0);
    let account = account.to_string();
    assert!(
        !after.text.contains(&account),
        "a raw path became a label: {}",
        after.text
    );
    assert!(after.has("keel_http_request_duration_seconds_bucket"));
    assert_eq!(after.value("keel_build_info", &[("component", "gateway")]), 1.0);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_relay_and_delivery_metrics_are_published() -> anyhow::Result<()> {
    let suite = spawn_suite().await?;
    suite.signed_in_user().await?;

    // The user's UserRegistered reaches accounts and notifications; the
    // relay counts both and its backlog drains to zero.
    let url = suite.metrics_url("auth")?;
    // The backlog is measured every 5 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let auth = loop {
        let auth = scrape(&url).await?;
        let delivered = |subscriber| {
            auth.value(
                "keel_relay_deliveries_total",
                &[
                    ("producer", "auth"),
                    ("subscriber", subscriber),
                    ("outcome", "delivered"),
                ],
            )
        };
        let drained = auth.value("keel_outbox_depth", &[("producer", "auth")]) == 0.0;
        if delivered("accounts") >= 1.0 && delivered("notifications") >= 1.0 && drained && auth.has("keel_outbox_depth")
        {
            break auth;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the relay's metrics never moved: {}",
            auth.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(auth.has("keel_outbox_oldest_age_seconds"));
    assert!(auth.value("keel_db_pool_max_connections", &[]) >= 1.0);
    assert!(auth.has("keel_db_pool_connections_in_use") && auth.has("keel_db_pool_waiting"));
    assert!(auth.has("keel_db_pool_timeouts_total"));
    assert!(auth.value("keel_argon2_queue_capacity", &[]) >= 64.0);
    assert!(auth.has("keel_argon2_queue_depth"));
    assert_eq!(auth.value("keel_build_info", &[("component", "auth")]), 1.0);

    for service in ["accounts", "orders", "notifications"] {
        let metrics = scrape(&suite.metrics_url(service)?).await?;
        assert_eq!(
            metrics.value("keel_build_info", &[("component", service)]),
            1.0,
            "{service}"
        );
        assert!(metrics.has("keel_db_pool_connections"), "{service}: {}", metrics.text);
    }
    let notifications = scrape(&suite.metrics_url("notifications")?).await?;
    assert!(
        notifications.has("keel_notification_dead_letters"),
        "{}",
        notifications.text
    );
    suite.stop().await
}
