//! Logs and traces: one subscriber for the process, with OTLP export when an
//! endpoint is configured, and the W3C trace context carried over gRPC
//! metadata.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use anyhow::Context as _;
use opentelemetry::{
    propagation::{Extractor, Injector},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer as _,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::SubscriberExt as _,
    registry::LookupSpan,
    util::SubscriberInitExt as _,
};

use crate::config::{LogFormat, TelemetryConfig};

/// Where log lines go (for [`init_with_writer`]).
pub use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// Keeps the tracer provider alive; dropping it flushes pending spans.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports every span ended so far, now rather than at the next batch.
    /// It blocks: call it off the async threads (`spawn_blocking`).
    pub fn flush(&self) -> anyhow::Result<()> {
        if let Some(provider) = &self.provider {
            provider.force_flush().context("flushing the trace exporter")?;
        }
        Ok(())
    }
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

/// The version every span's resource carries: the workspace's, which every
/// Keel crate shares.
pub const SERVICE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Installs the global subscriber and propagator. Call once, at start.
///
/// Spans get OpenTelemetry ids when something reads them: an OTLP endpoint
/// (the spans are exported, as `service_name` at [`SERVICE_VERSION`]) or
/// JSON logs (each line carries `trace_id` and `span_id`). Then calls to
/// other services carry `traceparent` too. With neither, building the ids
/// was a tenth of a cheap call's CPU for nothing (docs/performance.md).
pub fn init(service_name: &str, config: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    init_with_writer(service_name, config, BoxMakeWriter::new(std::io::stdout), terminal)
}

/// [`init`], with the log lines written to `writer` (in colour if `ansi`).
pub fn init_with_writer(
    service_name: &str,
    config: &TelemetryConfig,
    writer: BoxMakeWriter,
    ansi: bool,
) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = log_filter(&config.log_filter)?;
    let fmt = match config.log_format {
        LogFormat::Json => json_logs(writer).boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed(),
    };

    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .with_attribute(opentelemetry::KeyValue::new("service.version", SERVICE_VERSION))
        .build();
    let mut provider = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &config.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .context("building the OTLP span exporter")?;
        provider = provider.with_batch_exporter(exporter);
    }
    // Without an exporter the provider only makes ids: ended spans are
    // dropped at once.
    let provider = provider.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let ids_read = config.otlp_endpoint.is_some() || matches!(config.log_format, LogFormat::Json);
    let otel = ids_read.then(|| tracing_opentelemetry::layer().with_tracer(provider.tracer("keel")));

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .context("a tracing subscriber is already installed")?;
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

/// JSON log lines (one object each, with the current span) written to
/// `writer`, each with the `trace_id` and `span_id` of the span it was
/// logged in.
pub fn json_logs<S, W>(writer: W) -> impl tracing_subscriber::Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let json = tracing_subscriber::fmt::format().json().with_current_span(true);
    let dispatch = Arc::new(OnceLock::new());
    tracing_subscriber::fmt::layer()
        .json()
        .event_format(WithTraceIds {
            json,
            dispatch: dispatch.clone(),
        })
        .with_writer(writer)
        .and_then(RegisteredDispatch(dispatch))
}

/// A JSON event format with the OpenTelemetry ids of the event's span added
/// to each line: the ids that find the line's trace in a trace store.
#[derive(Debug)]
struct WithTraceIds<F> {
    json: F,
    /// The subscriber this format logs for: the OpenTelemetry layer is
    /// reached through it (`tracing::dispatcher::get_default` is a no-op
    /// while an event is being dispatched). Weak, as the subscriber owns
    /// the format.
    dispatch: Arc<OnceLock<tracing::dispatcher::WeakDispatch>>,
}

/// Tells [`WithTraceIds`] which subscriber it runs in, once it is built.
#[derive(Debug)]
struct RegisteredDispatch(Arc<OnceLock<tracing::dispatcher::WeakDispatch>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RegisteredDispatch {
    fn on_register_dispatch(&self, dispatch: &tracing::Dispatch) {
        // A layer is registered with one subscriber; a second call would
        // name the same one.
        let _ = self.0.set(dispatch.downgrade());
    }
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let dispatch = self.dispatch.get().and_then(tracing::dispatcher::WeakDispatch::upgrade);
        let ids = dispatch
            .zip(ctx.parent_span())
            .and_then(|(dispatch, span)| otel_ids(&dispatch, &span.id()));
        let Some((trace_id, span_id)) = ids else {
            return self.json.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.json.format_event(ctx, Writer::new(&mut line), event)?;
        // The JSON format writes one object and a newline: the ids go in
        // before its closing brace.
        match line.trim_end().strip_suffix('}') {
            Some(open) => writeln!(writer, r#"{open},"trace_id":"{trace_id}","span_id":"{span_id}"}}"#),
            None => writer.write_str(&line),
        }
    }
}

/// The OpenTelemetry trace and span ids (hex) of the span `id`, when the
/// OpenTelemetry layer gave it valid ones.
fn otel_ids(dispatch: &tracing::Dispatch, id: &tracing::span::Id) -> Option<(String, String)> {
    use opentelemetry::trace::TraceContextExt as _;
    // The fmt layer holds no span extensions while it formats, so reading
    // (and, for a span not yet started, starting) the OpenTelemetry span
    // here cannot deadlock.
    let context = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| (span_context.trace_id().to_string(), span_context.span_id().to_string()))
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

/// Makes the span of each incoming request (a gRPC call or an HTTP
/// request) for the Keel service `service` (`keel.service` on the span, as
/// one process may run them all): named by its method, path and
/// `x-request-id`, and continuing the caller's W3C trace context.
#[derive(Debug, Clone, Copy)]
pub struct RequestSpan {
    service: &'static str,
}

impl RequestSpan {
    /// Request spans of `service` (its short name: `orders`, `gateway`).
    pub fn new(service: &'static str) -> Self {
        Self { service }
    }

    /// Request spans of the server for `grpc_services`, named by the
    /// `<area>` of their `keel.<area>.v1.*` names.
    pub fn for_grpc_services(grpc_services: &[&'static str]) -> Self {
        let area = grpc_services
            .iter()
            .find_map(|name| name.strip_prefix("keel.")?.split('.').next())
            .unwrap_or_default();
        Self::new(area)
    }
}

impl<B> tower_http::trace::MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &http::Request<B>) -> tracing::Span {
        request_span(self.service, request)
    }
}

fn request_span<B>(service: &'static str, request: &http::Request<B>) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let path = request.uri().path();
    // A gRPC path is `/<service>/<method>`: the span takes the OpenTelemetry
    // RPC name and attributes; an HTTP request is named by its method alone,
    // as its path holds ids.
    let is_grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
    let rpc = is_grpc.then(|| path.trim_start_matches('/').split_once('/')).flatten();
    let name = match rpc {
        Some((rpc_service, rpc_method)) => format!("{rpc_service}/{rpc_method}"),
        None => request.method().to_string(),
    };
    // The subject fields are filled as the call learns them (see
    // `crate::serve::audit`), so every line it logs says who and from where.
    let span = tracing::info_span!(
        "request",
        otel.name = %name,
        otel.kind = "server",
        keel.service = service,
        rpc.service = rpc.map(|(rpc_service, _)| rpc_service),
        rpc.method = rpc.map(|(_, rpc_method)| rpc_method),
        method = %request.method(),
        path = %path,
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
pub fn current_trace_context() -> HashMap<String, String> {
    trace_context_of(&tracing::Span::current())
}

/// `span`'s trace context as `traceparent`/`tracestate` pairs (empty when
/// the span has no OpenTelemetry context).
pub fn trace_context_of(span: &tracing::Span) -> HashMap<String, String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = span.context();
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier);
    });
    carrier
}

/// The remote span context in a carrier [`current_trace_context`] wrote
/// (an event's stored trace context).
pub fn extract_trace_context(carrier: &HashMap<String, String>) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(carrier))
}

/// Makes `span` a child of the span whose context `carrier` holds (as
/// [`current_trace_context`] wrote it), so work done later, elsewhere, joins
/// that trace. Call it before the span is entered.
pub fn continue_trace(span: &tracing::Span, carrier: &HashMap<String, String>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if let Err(err) = span.set_parent(extract_trace_context(carrier)) {
        tracing::debug!(error = %err, "could not continue a stored trace");
    }
}

/// Writes `span`'s W3C trace context into outgoing HTTP headers, so the
/// server it calls continues the trace under that span.
pub fn inject_http_headers(span: &tracing::Span, headers: &mut http::HeaderMap) {
    for (key, value) in trace_context_of(span) {
        if let (Ok(key), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            headers.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use super::*;

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("the log buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Lines {
        type Writer = Lines;

        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn a_json_line_inside_a_span_carries_the_span_s_trace_and_span_ids() {
        let lines = Lines::default();
        // No exporter: the ids come from the provider alone, as they do when
        // no OTLP endpoint is set.
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(json_logs(lines.clone()))
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));

        let expected = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any span");
            let span = tracing::info_span!("work");
            span.in_scope(|| tracing::info!(answer = 42, "inside"));
            let context = span.context();
            let span_context = context.span().span_context().clone();
            (span_context.trace_id().to_string(), span_context.span_id().to_string())
        });

        let text = String::from_utf8(lines.0.lock().expect("the log buffer").clone()).expect("UTF-8 logs");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is one JSON object"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].get("trace_id").is_none(), "{text}");
        assert_eq!(lines[1]["fields"]["answer"], 42);
        assert_eq!(lines[1]["span"]["name"], "work");
        assert_eq!(lines[1]["trace_id"], expected.0.as_str());
        assert_eq!(lines[1]["span_id"], expected.1.as_str());
        assert_eq!(expected.0.len(), 32);
        assert_eq!(expected.1.len(), 16);
    }
}
