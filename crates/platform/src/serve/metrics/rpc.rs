//! RED metrics of a gRPC server: calls by method and code, their latency,
//! calls in flight and calls shed.
//!
//! A call is counted when its status is known: from the response headers
//! when it fails at once (trailers-only), else from the trailers at the end
//! of the body. A call dropped before its status (the caller went away, or
//! the server's deadline ended it) counts as CANCELLED.
//!
//! Streaming calls (a revocation feed, an inbox stream) are counted by
//! their status too, but stay out of the latency histogram and the
//! in-flight gauge: they live for hours by design, and would hide the
//! latency and load of the calls that answer.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use anyhow::Context as _;
use futures::future::BoxFuture;
use http_body::{Body, Frame};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
};

use super::{Metrics, latency_histogram};

/// The method label of calls to a path this server does not serve, so a
/// caller cannot mint label values.
const UNKNOWN_METHOD: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: &'static str,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    service: &'static str,
    method: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: &'static str,
}

/// How a served method is labelled and measured.
#[derive(Debug, Clone)]
struct Method {
    /// `Service/Method`.
    label: String,
    /// Either side streams: no latency, no in-flight.
    streaming: bool,
}

#[derive(Debug)]
struct Inner {
    service: &'static str,
    /// `/package.Service/Method` → how to count it, for every method served.
    methods: HashMap<String, Method>,
    requests: Family<CodeLabels, Counter>,
    duration: Family<CallLabels, Histogram>,
    in_flight: Family<ServiceLabels, Gauge>,
    shed: Family<ServiceLabels, Counter>,
}

/// The RPC metrics of one server; a tower layer for its call stack.
#[derive(Debug, Clone)]
pub struct RpcMetrics(Arc<Inner>);

impl RpcMetrics {
    /// Registers the RPC metrics on `metrics`, labelling calls to the
    /// methods of `grpc_services` (fully-qualified names, found in
    /// `descriptor_sets`) by name.
    pub fn new(metrics: &Metrics, grpc_services: &[&str], descriptor_sets: &[&[u8]]) -> anyhow::Result<Self> {
        use prost::Message as _;
        let mut methods = HashMap::new();
        for bytes in descriptor_sets {
            let set = prost_types::FileDescriptorSet::decode(*bytes).context("decoding a descriptor set")?;
            for file in &set.file {
                for service in &file.service {
                    let short = service.name();
                    let full = match file.package() {
                        "" => short.to_owned(),
                        package => format!("{package}.{short}"),
                    };
                    if !grpc_services.contains(&full.as_str()) {
                        continue;
                    }
                    for method in &service.method {
                        methods.insert(
                            format!("/{full}/{}", method.name()),
                            Method {
                                label: format!("{short}/{}", method.name()),
                                streaming: method.client_streaming() || method.server_streaming(),
                            },
                        );
                    }
                }
            }
        }
        let inner = Inner {
            service: metrics.component(),
            methods,
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
            shed: Family::default(),
        };
        metrics.register(
            "rpc_requests",
            "gRPC calls served, by method and status code.",
            inner.requests.clone(),
        );
        metrics.register(
            "rpc_duration_seconds",
            "How long gRPC calls took, to their status.",
            inner.duration.clone(),
        );
        metrics.register("rpc_in_flight", "gRPC calls running now.", inner.in_flight.clone());
        metrics.register(
            "rpc_shed",
            "gRPC calls refused at once (RESOURCE_EXHAUSTED) because the concurrency limit was reached.",
            inner.shed.clone(),
        );
        Ok(Self(Arc::new(inner)))
    }

    fn start(&self, path: &str) -> Pending {
        let method = self.0.methods.get(path).cloned().unwrap_or_else(|| Method {
            label: UNKNOWN_METHOD.to_owned(),
            streaming: false,
        });
        if !method.streaming {
            let service = ServiceLabels {
                service: self.0.service,
            };
            self.0.in_flight.get_or_create(&service).inc();
        }
        Pending {
            metrics: self.clone(),
            method: Some(method),
            started: Instant::now(),
        }
    }
}

impl<S> tower::Layer<S> for RpcMetrics {
    type Service = MeteredService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MeteredService {
            inner,
            metrics: self.clone(),
        }
    }
}

/// A call being served: counted once, when its status is known or when it
/// is abandoned.
#[derive(Debug)]
struct Pending {
    metrics: RpcMetrics,
    /// Taken when the call is counted.
    method: Option<Method>,
    started: Instant,
}

impl Pending {
    fn finish(&mut self, code: tonic::Code) {
        let Some(method) = self.method.take() else {
            return;
        };
        let inner = &self.metrics.0;
        let service = inner.service;
        if !method.streaming {
            inner
                .duration
                .get_or_create(&CallLabels {
                    service,
                    method: method.label.clone(),
                })
                .observe(self.started.elapsed().as_secs_f64());
            inner.in_flight.get_or_create(&ServiceLabels { service }).dec();
        }
        inner
            .requests
            .get_or_create(&CodeLabels {
                service,
                method: method.label,
                code: code_name(code),
            })
            .inc();
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

/// The call stack with every call measured.
#[derive(Debug, Clone)]
pub struct MeteredService<S> {
    inner: S,
    metrics: RpcMetrics,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for MeteredService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = tower::BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let mut pending = self.metrics.start(request.uri().path());
        let future = self.inner.call(request);
        Box::pin(async move {
            match future.await {
                Ok(response) => {
                    // Trailers-only: the status is in the headers already.
                    if let Some(code) = status_code(response.headers()) {
                        pending.finish(code);
                    }
                    Ok(response.map(|body| MeteredBody { body, pending }))
                }
                Err(err) => {
                    let err: tower::BoxError = err.into();
                    if err.is::<tower::load_shed::error::Overloaded>() {
                        let service = pending.metrics.0.service;
                        pending.metrics.0.shed.get_or_create(&ServiceLabels { service }).inc();
                    }
                    // The status tonic will answer with, as it maps errors.
                    let status = tonic::Status::from_error(err);
                    pending.finish(status.code());
                    Err(Box::new(status) as tower::BoxError)
                }
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its call at the trailers.
    #[derive(Debug)]
    pub struct MeteredBody<B> {
        #[pin]
        body: B,
        pending: Pending,
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_code) {
                    this.pending.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.pending.finish(tonic::Code::Internal),
            // A body that ends without a status broke the protocol.
            Poll::Ready(None) => this.pending.finish(tonic::Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn status_code(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?;
    Some(tonic::Code::from_bytes(value.as_bytes()))
}

/// The canonical name of `code`, as gRPC's documentation writes it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
