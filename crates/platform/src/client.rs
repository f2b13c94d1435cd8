//! The one way a Keel service calls another: a channel with connect and call
//! timeouts and HTTP/2 keep-alive, that adds the service's token and the
//! current W3C trace context to every call.
//!
//! # Service URLs
//!
//! A service URL (`KEEL_<SERVICE>_URL`, the gateway's upstreams) names where
//! the service runs in one of three ways:
//!
//! - `http://host:port`: one address, one lazily made HTTP/2 connection. The
//!   host is resolved when connecting, and every call goes to that one peer.
//! - `http://10.0.0.1:50051,http://10.0.0.2:50051`: several addresses,
//!   comma-separated; each call goes to one of them.
//! - `dns+http://orders.keel.svc:50053`: a name resolved again every
//!   `KEEL_CLIENT_RESOLVE_SECS`, each of its A/AAAA records an address (a
//!   Kubernetes headless Service names its ready pods this way). Items of a
//!   list may be `dns+` names too.
//!
//! Why more than one: a Kubernetes Service balances connections, not calls,
//! and an HTTP/2 channel keeps its one connection, so every call would stay
//! on the pod it first reached. With several addresses, calls are spread
//! over them (power of two choices, tonic's balancing channel), and a
//! background task health-checks each address every
//! `KEEL_CLIENT_HEALTH_INTERVAL_MS` (`grpc.health.v1.Health/Check`, service
//! `""`): one that is not SERVING, or does not answer within the interval,
//! gets no calls until it answers SERVING again. When none answers, calls go
//! to all of them and fail with their own error rather than wait. The task
//! ends with the last clone of the channel.

mod balance;

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use futures::future::BoxFuture;
use tonic::{
    body::Body,
    transport::{Channel, Endpoint},
};

use crate::{auth::service_token::TokenProvider, serve::telemetry::current_trace_context};

/// How service-to-service clients connect.
#[derive(Debug, Clone, Args)]
pub struct ClientConfig {
    /// How long connecting to another service may take (ms).
    #[arg(long, env = "KEEL_CLIENT_CONNECT_TIMEOUT_MS", default_value_t = 3_000)]
    pub client_connect_timeout_ms: u64,

    /// How long a call to another service may take, unless the call sets a
    /// shorter deadline (ms).
    #[arg(long, env = "KEEL_CLIENT_CALL_TIMEOUT_MS", default_value_t = 10_000)]
    pub client_call_timeout_ms: u64,

    /// How often an idle connection to another service is pinged, so a dead
    /// peer is noticed before the next call (seconds).
    #[arg(long, env = "KEEL_CLIENT_KEEPALIVE_SECS", default_value_t = 20)]
    pub client_keepalive_secs: u64,

    /// How often a `dns+` service URL is resolved again, so new replicas get
    /// calls and gone ones none (seconds).
    #[arg(long, env = "KEEL_CLIENT_RESOLVE_SECS", default_value_t = 10)]
    pub client_resolve_secs: u64,

    /// How often each address of a service URL that names several is
    /// health-checked; a check not answered within it counts as failed (ms).
    #[arg(long, env = "KEEL_CLIENT_HEALTH_INTERVAL_MS", default_value_t = 2_000)]
    pub client_health_interval_ms: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            client_connect_timeout_ms: 3_000,
            client_call_timeout_ms: 10_000,
            client_keepalive_secs: 20,
            client_resolve_secs: 10,
            client_health_interval_ms: 2_000,
        }
    }
}

impl ClientConfig {
    /// `endpoint` with these timeouts and keep-alive: one address, whether
    /// it is a channel of its own or one of a balanced channel's.
    fn configure(&self, endpoint: Endpoint) -> Endpoint {
        let keepalive = Duration::from_secs(self.client_keepalive_secs.max(1));
        endpoint
            .connect_timeout(Duration::from_millis(self.client_connect_timeout_ms))
            .timeout(Duration::from_millis(self.client_call_timeout_ms))
            .http2_keep_alive_interval(keepalive)
            .keep_alive_timeout(keepalive)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
    }
}

/// A lazily connected channel to the service at `url` (see [the module
/// documentation](self) for what a URL may name): one connection for one
/// address, calls balanced over the addresses otherwise.
pub fn channel(url: &str, config: &ClientConfig) -> anyhow::Result<Channel> {
    match balance::Source::parse_list(url)? {
        None => Ok(config
            .configure(Channel::from_shared(url.to_owned()).with_context(|| format!("{url:?} is not a URL"))?)
            .connect_lazy()),
        Some(sources) => {
            let (channel, _endpoints, _task) = balance::balanced(url, sources, config);
            Ok(channel)
        }
    }
}

/// A channel whose calls carry the service's token and the caller's trace
/// context: hand it to any generated client.
#[derive(Clone)]
pub struct ServiceChannel {
    channel: Channel,
    tokens: Arc<dyn TokenProvider>,
}

impl std::fmt::Debug for ServiceChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceChannel")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl ServiceChannel {
    /// Calls over `channel`, authenticated by `tokens`.
    pub fn new(channel: Channel, tokens: Arc<dyn TokenProvider>) -> Self {
        Self { channel, tokens }
    }

    /// The underlying channel (for calls that need no token, such as health).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }
}

impl tower::Service<http::Request<Body>> for ServiceChannel {
    type Response = http::Response<Body>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.channel, cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The channel that was polled ready serves this call; a clone takes
        // its place for the next.
        let ready = self.channel.clone();
        let mut channel = std::mem::replace(&mut self.channel, ready);
        let tokens = self.tokens.clone();
        // Read here, in the caller's span, not later in the spawned future.
        let trace = current_trace_context();
        Box::pin(async move {
            let headers = request.headers_mut();
            // A caller that set its own keeps it.
            for (key, value) in trace {
                if let (Ok(key), Ok(value)) = (
                    http::HeaderName::from_bytes(key.as_bytes()),
                    http::HeaderValue::from_str(&value),
                ) && !headers.contains_key(&key)
                {
                    headers.insert(key, value);
                }
            }
            if !headers.contains_key(http::header::AUTHORIZATION) {
                let token = tokens
                    .token()
                    .await
                    .map_err(|err| tonic::Status::unavailable(format!("no service token: {err:#}")))?;
                let mut value = http::HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| tonic::Status::internal("the service token is not a header value"))?;
                value.set_sensitive(true);
                headers.insert(http::header::AUTHORIZATION, value);
            }
            tower::Service::call(&mut channel, request).await.map_err(Into::into)
        })
    }
}
