//! Prometheus metrics: one registry per service (or gateway), served on an
//! admin listener of its own, off the public port.
//!
//! Every part of a service registers what it measures on the service's
//! [`Metrics`] at start: the gRPC server its RED metrics ([`rpc`]), the pool
//! and the relay theirs, a service its own (notifications' deliveries,
//! auth's hashing queue). Label values are always from a bounded set (method
//! names from the descriptors, route templates, outcome names), never raw
//! paths or ids.

pub mod rpc;
pub mod sampled;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use prometheus_client::{
    collector::Collector,
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Metric, Registry},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Latency buckets (seconds) for calls and requests: 1 ms to 30 s.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

/// A latency histogram with [`LATENCY_BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The two text formats a scraper may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0, which Prometheus asks for first.
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4, which `promtool check
    /// metrics` and older scrapers read.
    Prometheus,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it, else the classic
    /// format.
    fn negotiate(accept: &http::HeaderMap) -> Self {
        let asks = accept
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let refused = parts.clone().any(|param| param.replace(' ', "") == "q=0");
                parts.next() == Some(OPENMETRICS_MEDIA_TYPE) && !refused
            });
        if asks { Self::OpenMetrics } else { Self::Prometheus }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// The media type of OpenMetrics' text format.
const OPENMETRICS_MEDIA_TYPE: &str = "application/openmetrics-text";

/// The metrics of one component (a service or the gateway). Clones share
/// the registry.
#[derive(Clone)]
pub struct Metrics {
    component: &'static str,
    registry: Arc<Mutex<Registry>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    component: &'static str,
    version: &'static str,
}

impl Metrics {
    /// An empty registry for `component` (`auth`, `gateway`, …), holding
    /// only `keel_build_info`.
    pub fn new(component: &'static str) -> Self {
        let metrics = Self {
            component,
            registry: Arc::new(Mutex::new(Registry::with_prefix("keel"))),
        };
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                component,
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        metrics.register("build_info", "The running Keel build: always 1.", build);
        metrics
    }

    /// Which component these metrics describe.
    pub fn component(&self) -> &'static str {
        self.component
    }

    /// Registers `metric` as `keel_<name>`; `help` is one sentence (the
    /// library adds its full stop).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        let help = help.trim_end_matches('.');
        self.with_registry(|registry| registry.register(name, help, metric));
    }

    /// Registers a collector, read at every scrape (prefixed `keel_` too).
    pub fn register_collector(&self, collector: impl Collector) {
        self.with_registry(|registry| registry.register_collector(Box::new(collector)));
    }

    /// The whole registry in `format`.
    pub fn encode(&self, format: Format) -> anyhow::Result<String> {
        let mut text = String::new();
        let registry = self
            .registry
            .lock()
            .map_err(|_| anyhow::anyhow!("the metrics registry is poisoned"))?;
        match format {
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &registry),
            Format::Prometheus => prometheus_client::encoding::prometheus_text::encode(&mut text, &registry),
        }
        .context("encoding the metrics")?;
        Ok(text)
    }

    fn with_registry(&self, register: impl FnOnce(&mut Registry)) {
        // Registration happens at start; a poisoned lock means a panic there,
        // and the registry is still whole (registering is one push).
        let mut registry = self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        register(&mut registry);
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled: the
/// OpenMetrics text to scrapers that ask for it (Prometheus does), the
/// classic Prometheus text format to everyone else (curl, promtool).
pub async fn serve(listener: TcpListener, metrics: Metrics, shutdown: CancellationToken) -> anyhow::Result<()> {
    use axum::{
        Router,
        extract::State,
        http::{HeaderMap, StatusCode, header},
        response::IntoResponse,
        routing::get,
    };

    async fn scrape(State(metrics): State<Metrics>, headers: HeaderMap) -> axum::response::Response {
        let format = Format::negotiate(&headers);
        match metrics.encode(format) {
            Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
            Err(err) => {
                tracing::error!(error = format!("{err:#}"), "metrics could not be encoded");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }

    let address: SocketAddr = listener.local_addr().context("reading the metrics address")?;
    tracing::info!(%address, component = metrics.component, "serving metrics");
    let router = Router::new().route("/metrics", get(scrape)).with_state(metrics);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("the metrics listener failed")
}

/// Spawns [`serve`] when there is a listener, logging a failure instead of
/// stopping the service: metrics are for operators, not for callers.
pub fn spawn(listener: Option<TcpListener>, metrics: &Metrics, shutdown: &CancellationToken) {
    if let Some(listener) = listener {
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(err) = serve(listener, metrics, shutdown).await {
                tracing::error!(error = format!("{err:#}"), "metrics listener stopped");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepting(value: &str) -> Format {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_str(value).expect("a header value"),
        );
        Format::negotiate(&headers)
    }

    #[test]
    fn openmetrics_only_to_who_asks_for_it() {
        let prometheus = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
                          text/plain;version=0.0.4;q=0.3,*/*;q=0.1";
        assert_eq!(accepting(prometheus), Format::OpenMetrics);
        assert_eq!(accepting("*/*"), Format::Prometheus);
        assert_eq!(accepting("text/plain"), Format::Prometheus);
        assert_eq!(
            accepting("application/openmetrics-text; q=0, text/plain"),
            Format::Prometheus
        );
        assert_eq!(Format::negotiate(&http::HeaderMap::new()), Format::Prometheus);
    }

    #[test]
    fn both_formats_name_counters_as_their_samples_expect() {
        let metrics = Metrics::new("test");
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        counter.inc();
        metrics.register("calls", "Calls made.", counter);
        let classic = metrics.encode(Format::Prometheus).expect("text");
        assert!(classic.contains("# HELP keel_calls_total Calls made.\n"), "{classic}");
        assert!(
            classic.contains("keel_calls_total 1\n") && !classic.contains("# EOF"),
            "{classic}"
        );
        let open = metrics.encode(Format::OpenMetrics).expect("text");
        assert!(
            open.contains("# TYPE keel_calls counter\n") && open.ends_with("# EOF\n"),
            "{open}"
        );
    }
}
