//! Runs a gRPC service: health, reflection, one tower stack, graceful
//! shutdown.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::ServiceBuilder;
use tower_http::{
    classify::GrpcFailureClass,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};

use crate::{
    auth::verifier::{AuthenticateLayer, Verifier},
    config::ServerConfig,
    serve::metrics::{Metrics, rpc::RpcMetrics},
    serve::rules::{Rules, ValidateLayer},
    serve::telemetry::RequestSpan,
};

/// How often readiness is re-checked against the database: an outage shows
/// as NOT_SERVING within a second (one interval plus a failed check).
const READINESS_INTERVAL: Duration = Duration::from_millis(250);
/// The longest one readiness check may take before it counts as failed.
const READINESS_TIMEOUT: Duration = Duration::from_millis(600);

/// The services every port serves besides its own, and lists through
/// reflection.
const STANDARD_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// One gRPC service process, ready to run.
#[allow(missing_debug_implementations)]
pub struct GrpcServer {
    /// The fully-qualified gRPC service names to report health for.
    pub service_names: Vec<&'static str>,
    /// The services to serve.
    pub routes: Routes,
    /// Verifies bearer tokens on every call.
    pub verifier: Arc<Verifier>,
    /// The service's database: SERVING only while it answers. Checked on a
    /// connection of its own, so a busy pool does not read as an outage.
    pub database_url: String,
    /// Timeouts and limits.
    pub config: ServerConfig,
    /// Where its RED metrics are registered.
    pub metrics: Metrics,
}

impl GrpcServer {
    /// Serves on `listener` until `shutdown` is cancelled, then reports
    /// NOT_SERVING, stops accepting, and drains in-flight calls for at most
    /// the configured grace period.
    pub async fn run(self, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        set_status(&reporter, &self.service_names, ServingStatus::NotServing).await;

        let reflection_v1 = reflection(&self.service_names)
            .build_v1()
            .context("building the reflection service")?;
        let reflection_v1alpha = reflection(&self.service_names)
            .build_v1alpha()
            .context("building the reflection service")?;

        let readiness = tokio::spawn(track_readiness(
            reporter.clone(),
            self.service_names.clone(),
            self.database_url.clone(),
            shutdown.clone(),
        ));

        let served: Vec<&str> = self.service_names.iter().chain(&STANDARD_SERVICES).copied().collect();
        let rpc_metrics = RpcMetrics::new(
            &self.metrics,
            &served,
            &[
                keel::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ],
        )?;

        let rules = Rules::shared().context("reading the request rules")?;
        let layers = ServiceBuilder::new()
            // A request id for every call: the caller's `x-request-id`, or a new
            // one; it names the call's span and goes back in the response.
            .map_request(crate::serve::telemetry::drop_unfit_request_id::<tonic::body::Body>)
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            // One span per call, continuing the caller's W3C trace context.
            .layer(
                TraceLayer::new_for_grpc()
                    .make_span_with(RequestSpan::for_grpc_services(&self.service_names))
                    // Outcomes are logged from the status itself (headers for
                    // an early error, trailers otherwise), which says more
                    // than the failure class.
                    .on_response(|response: &http::Response<_>, latency: Duration, _: &tracing::Span| {
                        log_outcome(response.headers(), latency);
                    })
                    .on_eos(
                        |trailers: Option<&http::HeaderMap>, latency: Duration, _: &tracing::Span| {
                            if let Some(trailers) = trailers {
                                log_outcome(trailers, latency);
                            }
                        },
                    )
                    .on_failure(log_transport_failure),
            )
            // Counted outside the limit, so shed calls are counted too.
            .layer(rpc_metrics)
            // Refuse work beyond the limit at once (RESOURCE_EXHAUSTED) rather
            // than queue it behind calls that may already be late.
            .load_shed()
            .concurrency_limit(self.config.concurrency_limit)
            // Verify bearer tokens once, at the edge of every service.
            .layer(AuthenticateLayer::new(self.verifier.clone()))
            // The protos' request rules, checked before any handler runs.
            .layer(ValidateLayer::new(rules))
            .into_inner();

        let keepalive = self.config.keepalive();
        let router = tonic::transport::Server::builder()
            // Cancels calls that run past the deadline (or the caller's
            // shorter grpc-timeout).
            .timeout(self.config.request_timeout())
            // Pings idle connections so dead peers are dropped, and bounds
            // how many calls one connection may have open.
            .http2_keepalive_interval(Some(keepalive))
            .http2_keepalive_timeout(Some(keepalive))
            .max_concurrent_streams(self.config.max_concurrent_streams)
            .layer(layers)
            .add_routes(self.routes)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        let stopping = {
            let reporter = reporter.clone();
            let names = self.service_names.clone();
            let shutdown = shutdown.clone();
            let delay = self.config.shutdown.delay();
            async move {
                shutdown.cancelled().await;
                set_status(&reporter, &names, ServingStatus::NotServing).await;
                // Keep accepting for a moment, so load balancers see
                // NOT_SERVING before connections are refused.
                tracing::info!(?delay, "shutting down: NOT_SERVING");
                tokio::time::sleep(delay).await;
                tracing::info!("draining in-flight calls");
            }
        };
        // No Nagle: small gRPC frames must not wait for the peer's delayed ACK.
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let serve = router.serve_with_incoming_shutdown(incoming, stopping);
        let grace = self.config.shutdown.delay() + self.config.shutdown.grace();
        let drain_deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        let result = tokio::select! {
            result = serve => result.context("the gRPC server failed"),
            () = drain_deadline => {
                tracing::warn!(?grace, "calls still in flight after the grace period; stopping anyway");
                Ok(())
            }
        };
        readiness.abort();
        result
    }
}

/// Binds `addr`, with a clear message when the port is taken.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr} (is another process using the port?)"))
}

/// Polls the standard health service at `channel` until `service` reports
/// SERVING, or fails after `timeout`.
pub async fn wait_until_serving(
    channel: tonic::transport::Channel,
    service: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response, health_client::HealthClient};
    let mut health = HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Each attempt is bounded too: a peer that accepts but never answers
        // must not outlast the deadline.
        let check = health.check(HealthCheckRequest {
            service: service.into(),
        });
        let status = match tokio::time::timeout_at(deadline, check).await {
            Ok(answer) => answer.map(|r| r.into_inner().status).map_err(|status| status.code()),
            Err(_) => Err(tonic::Code::DeadlineExceeded),
        };
        if status == Ok(health_check_response::ServingStatus::Serving as i32) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{service} did not report SERVING within {timeout:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = interrupt => {},
            () = terminate => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// Reflection that lists exactly the services this port serves.
fn reflection(service_names: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    service_names.iter().chain(&STANDARD_SERVICES).fold(
        // Both reflection versions' own descriptors, whichever version is
        // asked: each lists the other, and clients resolve what is listed.
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(keel::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET),
        |builder, name| builder.with_service_name(*name),
    )
}

/// A caller's mistake (bad input, refused access, a missing resource, a
/// throttled login, a message that is not valid protobuf) is the service
/// doing its job and is logged at debug; a failure of the service itself at
/// error.
fn log_outcome(headers: &http::HeaderMap, latency: Duration) {
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    let latency_ms = latency.as_millis();
    let code = status.code();
    if code == tonic::Code::Ok {
        return;
    }
    let server_fault = matches!(
        code,
        tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::DataLoss
            | tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
    ) && !is_malformed_request(&status);
    if server_fault {
        tracing::error!(?code, message = status.message(), latency_ms, "call failed");
    } else if !crate::serve::audit::refused(&status) {
        tracing::debug!(?code, message = status.message(), latency_ms, "call refused");
    }
}

/// gRPC answers a request that does not decode with INTERNAL (as its spec
/// says), but the fault is the caller's.
fn is_malformed_request(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Internal && status.message().starts_with("failed to decode Protobuf message")
}

/// The connection or a body failed (no status to read).
fn log_transport_failure(class: GrpcFailureClass, latency: Duration, _span: &tracing::Span) {
    if let GrpcFailureClass::Error(error) = class {
        tracing::error!(%error, latency_ms = latency.as_millis(), "call failed");
    }
}

async fn set_status(reporter: &HealthReporter, names: &[&'static str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in names {
        reporter.set_service_status(*name, status).await;
    }
}

/// SERVING while the database answers, NOT_SERVING while it does not.
async fn track_readiness(
    reporter: HealthReporter,
    names: Vec<&'static str>,
    database_url: String,
    shutdown: CancellationToken,
) {
    let mut serving = false;
    let mut conn: Option<AsyncPgConnection> = None;
    loop {
        let healthy = match check(&mut conn, &database_url).await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), "database check failed");
                false
            }
        };
        if shutdown.is_cancelled() {
            return;
        }
        if healthy != serving {
            serving = healthy;
            let status = if healthy {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_status(&reporter, &names, status).await;
            tracing::info!(?status, "health changed");
        }
        tokio::select! {
            () = tokio::time::sleep(READINESS_INTERVAL) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Whether the database answers. A failure on the kept connection may only
/// mean that connection died (Postgres restarted since): it is judged again
/// on a new connection before the database counts as down.
async fn check(conn: &mut Option<AsyncPgConnection>, url: &str) -> anyhow::Result<()> {
    if conn.is_some() && ping(conn, url).await.is_ok() {
        return Ok(());
    }
    *conn = None;
    let result = ping(conn, url).await;
    if result.is_err() {
        *conn = None;
    }
    result
}

/// `SELECT 1` on the readiness connection, connecting first if there is none,
/// within [`READINESS_TIMEOUT`].
async fn ping(conn: &mut Option<AsyncPgConnection>, url: &str) -> anyhow::Result<()> {
    let check = async {
        if conn.is_none() {
            *conn = Some(AsyncPgConnection::establish(url).await.context("connecting")?);
        }
        if let Some(conn) = conn.as_mut() {
            diesel::sql_query("SELECT 1").execute(conn).await.context("SELECT 1")?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(READINESS_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {READINESS_TIMEOUT:?}")))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What `log` writes, at every level.
    fn logged(log: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("the log buffer").extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = buffer.0.lock().expect("the log buffer").clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn headers(status: &tonic::Status) -> http::HeaderMap {
        status.clone().into_http::<()>().headers().clone()
    }

    #[test]
    fn a_request_that_is_not_protobuf_is_the_caller_s_fault() {
        // What tonic answers when a request does not decode.
        let error = <keel::auth::v1::LoginRequest as prost::Message>::decode(&[0xff, 0xff, 0xff][..])
            .expect_err("not protobuf");
        let malformed = tonic::Status::internal(error.to_string());
        let logs = logged(|| log_outcome(&headers(&malformed), Duration::ZERO));
        assert!(logs.contains("DEBUG") && !logs.contains("ERROR"), "{logs}");

        let broken = tonic::Status::internal("internal error");
        let logs = logged(|| log_outcome(&headers(&broken), Duration::ZERO));
        assert!(logs.contains("ERROR"), "{logs}");

        let refused = tonic::Status::invalid_argument("email: must contain @");
        let logs = logged(|| log_outcome(&headers(&refused), Duration::ZERO));
        assert!(!logs.contains("ERROR"), "{logs}");
    }
}
