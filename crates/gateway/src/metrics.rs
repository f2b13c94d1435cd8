//! RED metrics of the gateway's HTTP side: requests by route template,
//! method and status, their latency, and requests in flight.
//!
//! The route label is the route's template as the OpenAPI document writes
//! it (`/v1/accounts/{account_id}`), never the raw path; a request no route
//! matches counts as `unmatched`, and a method outside HTTP's usual ones as
//! `OTHER`, so no caller can mint label values.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};
use keel_platform::serve::metrics::{Metrics, latency_histogram};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
};

/// The route label of a request no route matched.
const UNMATCHED: &str = "unmatched";

/// The template of the API route that served a response, put in the
/// response's extensions by the handler that resolved it.
#[derive(Debug, Clone)]
pub struct RouteTemplate(pub Arc<str>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<str>,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    route: Arc<str>,
    method: &'static str,
    status: u16,
}

/// The gateway's HTTP metrics.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<StatusLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    in_flight: Gauge,
}

impl HttpMetrics {
    /// Registers the HTTP metrics on `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let http = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            in_flight: Gauge::default(),
        };
        metrics.register(
            "http_requests",
            "Gateway requests answered, by route template, method and status.",
            http.requests.clone(),
        );
        metrics.register(
            "http_request_duration_seconds",
            "How long the gateway took to answer (to the response's headers; a stream's lifetime is not counted).",
            http.duration.clone(),
        );
        metrics.register(
            "http_in_flight",
            "Gateway requests being answered now.",
            http.in_flight.clone(),
        );
        http
    }
}

/// Middleware: measures every request.
pub async fn track(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    // The gateway's own endpoints (`/healthz`, ...) are axum routes.
    let matched: Option<Arc<str>> = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().into());
    let in_flight = InFlight::enter(&metrics.in_flight);
    let response = next.run(request).await;
    drop(in_flight);
    let route = response
        .extensions()
        .get::<RouteTemplate>()
        .map(|template| template.0.clone())
        .or(matched)
        .unwrap_or_else(|| UNMATCHED.into());
    metrics
        .duration
        .get_or_create(&RouteLabels {
            route: route.clone(),
            method,
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&StatusLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// One request in flight; leaves the gauge when dropped, also when the
/// client goes away mid-request and the request's future is dropped.
struct InFlight<'a>(&'a Gauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}
