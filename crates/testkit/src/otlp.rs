//! An OTLP/gRPC trace receiver on port 0: the collector's TraceService (as
//! `opentelemetry-proto` generates it), keeping every span it is sent, so a
//! test can point `OTEL_EXPORTER_OTLP_ENDPOINT` at it and read the trace a
//! request made.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use anyhow::Context as _;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One span as exported, ids in lowercase hex (as `traceparent` spells
/// them).
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The trace id (32 hex digits).
    pub trace_id: String,
    /// The span id (16 hex digits).
    pub span_id: String,
    /// The parent's span id; None for a root.
    pub parent_span_id: Option<String>,
    /// The span's name.
    pub name: String,
    /// The OTLP span kind (`SPAN_KIND_SERVER` is 2, `CLIENT` 3,
    /// `PRODUCER` 4, `CONSUMER` 5).
    pub kind: i32,
    /// Its attributes, values as text.
    pub attributes: BTreeMap<String, String>,
    /// The (trace id, span id) of every span it links to.
    pub links: Vec<(String, String)>,
    /// Its resource's attributes (`service.name`, `service.version`).
    pub resource: BTreeMap<String, String>,
}

impl ReceivedSpan {
    /// An attribute as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// The running receiver; stops when dropped.
#[derive(Debug)]
pub struct TraceReceiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    stop: CancellationToken,
}

impl TraceReceiver {
    /// Listens on 127.0.0.1, port 0.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the trace receiver")?;
        let addr = listener.local_addr()?;
        let spans = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let service = TraceServiceServer::new(Collector { spans: spans.clone() });
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let stopped = stop.clone();
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stopped.cancelled_owned())
                .await;
            if let Err(err) = served {
                eprintln!("the trace receiver stopped: {err}");
            }
        });
        Ok(Self { addr, spans, stop })
    }

    /// Its OTLP/gRPC endpoint, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        lock(&self.spans).clone()
    }

    /// The spans received so far of the trace `trace_id` (hex).
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        lock(&self.spans)
            .iter()
            .filter(|span| span.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

impl Drop for TraceReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A poisoned lock only means a test panicked while holding it; the spans
/// are still good.
fn lock(spans: &Mutex<Vec<ReceivedSpan>>) -> MutexGuard<'_, Vec<ReceivedSpan>> {
    spans.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|resource| attributes(&resource.attributes))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|scope| scope.spans) {
                received.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
                    name: span.name,
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|link| (hex(&link.trace_id), hex(&link.span_id)))
                        .collect(),
                    resource: resource.clone(),
                });
            }
        }
        lock(&self.spans).extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|pair| (pair.key.clone(), pair.value.as_ref().map(text).unwrap_or_default()))
        .collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
