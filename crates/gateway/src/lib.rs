//! Keel's REST/JSON gateway. Every RPC with a `google.api.http` annotation is
//! a route, read from the descriptor set at start; requests are bound into
//! the RPC's request message (proto3 JSON mapping), checked at the edge
//! (bearer token, per-client rate limit, body size) and forwarded over gRPC
//! with the caller's token, so the services check it again.

use std::{collections::BTreeMap, net::SocketAddr, num::NonZeroU32, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args;
use keel_platform::{
    auth::{auth_service::GrpcKeySource, verifier::Verifier},
    config::{ShutdownConfig, TokenConfig},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod bind;
pub mod codec;
pub mod connections;
pub mod descriptors;
pub mod docs;
pub mod edge;
pub mod error;
pub mod handler;
pub mod metrics;
pub mod openapi;
pub mod provider_sign_in;
pub mod respond;
pub mod resume;
pub mod routes;
pub mod status;
pub mod streams;
pub mod template;
pub mod upstream;
pub mod websocket;

use descriptors::Descriptors;
use edge::ClientLimiter;
use routes::RouteTable;
use streams::OpenStreams;
use upstream::Upstreams;

/// The gateway's settings.
#[derive(Debug, Clone, Args)]
pub struct GatewayConfig {
    /// Where the gateway listens for HTTP.
    #[arg(
        long = "gateway-listen",
        env = "KEEL_GATEWAY_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// Requests per minute each client may make (by token subject, else by
    /// address); 0 turns the limit off.
    #[arg(long, env = "KEEL_GATEWAY_RATE_LIMIT_PER_MINUTE", default_value_t = 600)]
    pub rate_limit_per_minute: u32,

    /// How many requests a client may make at once above its steady rate.
    #[arg(long, env = "KEEL_GATEWAY_RATE_LIMIT_BURST", default_value_t = 60)]
    pub rate_limit_burst: u32,

    /// The largest request body accepted (bytes); larger ones get 413.
    #[arg(long, env = "KEEL_GATEWAY_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// How long a client may take to send a request's headers, from its
    /// first byte (ms); slower connections are closed.
    #[arg(long, env = "KEEL_GATEWAY_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// How long a client may take to send a request's body (ms); slower gets
    /// 408 and the connection is closed.
    #[arg(long, env = "KEEL_GATEWAY_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_timeout_ms: u64,

    /// How long a kept-alive connection may sit with no request (ms).
    #[arg(long, env = "KEEL_GATEWAY_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// The most client connections open at once; more wait in the listen
    /// queue until one closes.
    #[arg(long, env = "KEEL_GATEWAY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// How many event streams and WebSocket sessions one client (by token
    /// subject, else by address) may hold open at once; more get 429. 0
    /// turns the cap off.
    #[arg(long, env = "KEEL_GATEWAY_MAX_STREAMS_PER_CLIENT", default_value_t = 16)]
    pub max_streams_per_client: usize,

    /// How long a write to a client may stay blocked (its TCP window shut:
    /// it reads nothing) before the connection is dropped (ms). It bounds
    /// event streams and WebSocket sessions nobody reads.
    #[arg(long, env = "KEEL_GATEWAY_SEND_TIMEOUT_MS", default_value_t = 10_000)]
    pub send_timeout_ms: u64,

    /// How long the gateway waits for a service's reply (ms); longer gets 504.
    #[arg(long, env = "KEEL_GATEWAY_UPSTREAM_TIMEOUT_MS", default_value_t = 10_000)]
    pub upstream_timeout_ms: u64,

    /// Origins browsers may call from (comma-separated, or `*`); empty turns
    /// CORS off.
    #[arg(long, env = "KEEL_GATEWAY_CORS_ALLOW_ORIGINS", value_delimiter = ',')]
    pub cors_allow_origins: Vec<String>,

    /// Proxies in front of the gateway (load balancers; comma-separated
    /// addresses) whose `x-forwarded-for` names the client. The client's
    /// address keys the rate limit and is forwarded to the services.
    #[arg(long, env = "KEEL_GATEWAY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// Serve the interactive API reference (Swagger UI over /openapi.json)
    /// at /docs. Off by default, as in production; `keel up` turns it on.
    #[arg(long = "gateway-docs", env = "KEEL_GATEWAY_DOCS", default_value_t = false,
          action = clap::ArgAction::Set)]
    pub docs: bool,

    #[command(flatten)]
    pub tokens: TokenConfig,

    #[command(flatten)]
    pub shutdown: ShutdownConfig,
}

impl GatewayConfig {
    /// Parses `args` (the first is the program name), with the environment
    /// filling in what they leave out.
    pub fn from_args<'a>(args: impl IntoIterator<Item = &'a str>) -> anyhow::Result<Self> {
        keel_platform::config::from_args(args)
    }

    /// The upstream timeout.
    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_timeout_ms)
    }

    /// The connection limits and timeouts.
    pub fn connection_limits(&self) -> connections::Limits {
        connections::Limits {
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_connections: self.max_connections,
            send_timeout: self.send_timeout(),
        }
    }

    /// The send timeout.
    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms)
    }
}

/// Everything a request needs, built once at start.
#[derive(Debug)]
pub struct Gateway {
    descriptors: Descriptors,
    routes: RouteTable,
    upstreams: Upstreams,
    verifier: Arc<Verifier>,
    limiter: Option<ClientLimiter>,
    streams: OpenStreams,
    openapi: bytes::Bytes,
    max_body_bytes: usize,
    body_timeout: Duration,
    upstream_timeout: Duration,
    send_timeout: Duration,
    trusted_proxies: Vec<std::net::IpAddr>,
    /// Whether `/docs` is served.
    docs: bool,
    ready: std::sync::atomic::AtomicBool,
    /// Cancelled when the gateway stops taking connections: open event
    /// streams and WebSocket sessions end then, so clients reconnect
    /// elsewhere instead of being cut at the end of the grace period.
    stopping: CancellationToken,
}

impl Gateway {
    /// Reads the routes and connects (lazily) to `upstreams`: each area's
    /// service URL (`auth`, `accounts`, ... as the registry names them). Only
    /// the routes of those areas are served.
    pub fn build<'a>(
        config: &GatewayConfig,
        upstreams: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> anyhow::Result<Self> {
        let descriptors = Descriptors::load()?;
        // The gateway bounds each call itself (504 after the upstream
        // timeout); the channel's own bound comes a second later, so it
        // never answers first.
        let client = keel_platform::client::ClientConfig {
            client_call_timeout_ms: config.upstream_timeout_ms.saturating_add(1_000),
            ..Default::default()
        };
        let mut areas = Upstreams::default();
        for (area, url) in upstreams {
            areas.add(area, url, &client)?;
        }
        let upstreams = areas;
        let mut routes = RouteTable::from_descriptors(&descriptors)?;
        routes.retain(|route| upstreams.channel(route.area()).is_some());
        // The verifier fetches keys over the same connection the auth routes use.
        let auth = upstreams.channel("auth").context("auth has no upstream")?;
        let verifier = Arc::new(Verifier::new(
            &config.tokens.token_issuer,
            &config.tokens.token_audience,
            Arc::new(GrpcKeySource::new(auth)),
        ));
        let limiter = NonZeroU32::new(config.rate_limit_per_minute).map(|rate| {
            let burst = NonZeroU32::new(config.rate_limit_burst).unwrap_or(NonZeroU32::MIN);
            ClientLimiter::new(rate, burst)
        });
        let openapi =
            serde_json::to_vec(&openapi::document(&descriptors, &routes)).context("rendering the OpenAPI document")?;
        Ok(Gateway {
            descriptors,
            routes,
            upstreams,
            verifier,
            limiter,
            streams: OpenStreams::new(config.max_streams_per_client),
            openapi: openapi.into(),
            max_body_bytes: config.max_body_bytes,
            body_timeout: Duration::from_millis(config.body_timeout_ms),
            upstream_timeout: config.upstream_timeout(),
            send_timeout: config.send_timeout(),
            trusted_proxies: config.trusted_proxies.clone(),
            docs: config.docs,
            ready: std::sync::atomic::AtomicBool::new(true),
            stopping: CancellationToken::new(),
        })
    }

    /// The routes served.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// The streams open now.
    pub fn streams(&self) -> &OpenStreams {
        &self.streams
    }

    /// The services behind the gateway.
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }
}

/// Serves the gateway in front of `upstreams` (area -> URL) on `listener`
/// until `shutdown` is cancelled: then `/readyz` fails at once, new
/// connections are refused after the shutdown delay, open event streams and
/// WebSocket sessions end, and other open requests get the grace period to
/// finish. Its metrics are served on `metrics_listener`, if given.
pub async fn run(
    config: GatewayConfig,
    upstreams: BTreeMap<&'static str, String>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = keel_platform::serve::metrics::Metrics::new("gateway");
    keel_platform::serve::metrics::spawn(metrics_listener, &metrics, &shutdown);
    let gateway = Arc::new(Gateway::build(
        &config,
        upstreams.iter().map(|(area, url)| (*area, url.as_str())),
    )?);
    gateway.streams.register(&metrics);
    if let Some(limiter) = gateway.limiter.clone() {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = ticks.tick() => limiter.prune(),
                    () = stop.cancelled() => break,
                }
            }
        });
    }
    // Revoked tokens are refused at the edge too, within seconds.
    let auth = gateway.upstreams.channel("auth").context("auth has no upstream")?;
    gateway
        .verifier
        .follow_revocations(Arc::new(GrpcKeySource::new(auth)), shutdown.clone());
    let router = handler::router(
        gateway.clone(),
        &config.cors_allow_origins,
        metrics::HttpMetrics::new(&metrics),
    )?;
    let address = listener.local_addr().context("reading the gateway's address")?;
    tracing::info!(%address, routes = gateway.routes.routes().len(), "gateway serving HTTP");

    let stopping = gateway.stopping.clone();
    let drain = {
        let (gateway, stopping, shutdown) = (gateway.clone(), stopping.clone(), shutdown.clone());
        let delay = config.shutdown.delay();
        async move {
            shutdown.cancelled().await;
            gateway.ready.store(false, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            stopping.cancel();
        }
    };
    tokio::spawn(drain);
    connections::serve(
        listener,
        router,
        config.connection_limits(),
        stopping,
        config.shutdown.grace(),
    )
    .await
}
