//! Logs and traces: one subscriber for the process, with OTLP export when an
//! endpoint is configured, and the W3C trace context carried over gRPC
//! metadata.

use anyhow::Context as _;
use opentelemetry::{
    propagation::{Extractor, Injector},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};

use crate::config::{LogFormat, TelemetryConfig};

/// Keeps the trace exporter alive; dropping it flushes pending spans.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("trace export did not flush: {err}");
        }
    }
}

/// Installs the global subscriber and propagator. Call once, at start.
pub fn init(service_name: &str, config: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = log_filter(&config.log_filter)?;
    let fmt = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_current_span(true).boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .boxed(),
    };

    let provider = match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .context("building the OTLP span exporter")?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name.to_owned())
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    let otel = provider.as_ref().map(|provider| {
        opentelemetry::global::set_tracer_provider(provider.clone());
        tracing_opentelemetry::layer().with_tracer(provider.tracer("keel"))
    });

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .context("a tracing subscriber is already installed")?;
    Ok(TelemetryGuard { provider })
}

/// The log filter for `directives` (e.g. `info,keel_auth=debug`), with one
/// override no setting lifts: at DEBUG, tokio-postgres logs the bind
/// parameters of every statement, and those carry password hashes, signing
/// keys and the one-time tokens inside outbox events.
pub fn log_filter(directives: &str) -> anyhow::Result<EnvFilter> {
    let filter = EnvFilter::try_new(directives).with_context(|| format!("invalid log filter {directives:?}"))?;
    Ok(filter.add_directive("tokio_postgres::query=info".parse()?))
}

/// Reads W3C trace context from HTTP/2 headers (gRPC metadata).
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}

/// The longest `x-request-id` accepted from a caller.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// Drops a caller's `x-request-id` that is empty, longer than
/// [`MAX_REQUEST_ID_LEN`] or not printable ASCII, so a fresh one is made in
/// its place: it names the call's span and goes into every log line of the
/// call, where a caller must not write what it likes.
pub fn drop_unfit_request_id<B>(mut request: http::Request<B>) -> http::Request<B> {
    let fit = request.headers().get("x-request-id").is_none_or(|value| {
        let bytes = value.as_bytes();
        !bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID_LEN && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
    });
    if !fit {
        request.headers_mut().remove("x-request-id");
    }
    request
}

/// The span of one incoming request (a gRPC call or an HTTP request), named
/// by its method, path and `x-request-id`, and continuing the caller's W3C
/// trace context.
pub fn request_span<B>(request: &http::Request<B>) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // The subject fields are filled as the call learns them (see
    // `crate::audit`), so every line it logs says who and from where.
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %request_id,
        peer = tracing::field::Empty,
        client = tracing::field::Empty,
        subject = tracing::field::Empty,
        token_refusal = tracing::field::Empty,
    );
    if let Some(peer) = request
        .extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
    {
        span.record("peer", tracing::field::display(peer));
    }
    continue_remote_trace(&span, request.headers());
    span
}

/// Makes `span` a child of the caller's W3C trace context in `headers`, so a
/// request's spans join the trace it arrived with.
fn continue_remote_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let parent =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)));
    if let Err(err) = span.set_parent(parent) {
        tracing::debug!(error = %err, "could not continue the caller's trace");
    }
}

/// Writes W3C trace context into outgoing gRPC metadata.
#[derive(Debug)]
pub struct MetadataInjector<'a>(pub &'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// The current span's trace context as `traceparent`/`tracestate` pairs, for
/// events that continue the trace after the outbox.
pub fn current_trace_context() -> std::collections::HashMap<String, String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier);
    });
    carrier
}
