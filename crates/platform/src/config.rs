//! Settings every service shares, read from flags and the environment
//! (`--help` lists every variable).

use std::time::Duration;

use clap::{Args, ValueEnum};

/// How the gRPC server treats its calls.
#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    /// The longest a call may run before it is cancelled (seconds).
    #[arg(long, env = "KEEL_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,

    /// The most calls in flight at once; beyond it, calls are shed with
    /// RESOURCE_EXHAUSTED rather than queued.
    #[arg(long, env = "KEEL_CONCURRENCY_LIMIT", default_value_t = 1024)]
    pub concurrency_limit: usize,

    /// How often idle connections are pinged, and how long a ping may go
    /// unanswered before the connection is closed (seconds).
    #[arg(long, env = "KEEL_GRPC_KEEPALIVE_SECS", default_value_t = 20)]
    pub grpc_keepalive_secs: u64,

    /// The most calls one connection may have open at once.
    #[arg(long, env = "KEEL_GRPC_MAX_STREAMS_PER_CONNECTION", default_value_t = 256)]
    pub max_concurrent_streams: u32,

    #[command(flatten)]
    pub shutdown: ShutdownConfig,
}

impl ServerConfig {
    /// The per-call timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// The HTTP/2 keep-alive interval and timeout.
    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.grpc_keepalive_secs.max(1))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            request_timeout_secs: 30,
            concurrency_limit: 1024,
            grpc_keepalive_secs: 20,
            max_concurrent_streams: 256,
            shutdown: ShutdownConfig::default(),
        }
    }
}

/// How a server stops: not ready first, then draining.
#[derive(Debug, Clone, Args)]
pub struct ShutdownConfig {
    /// How long a stopping server keeps accepting requests after it reports
    /// not ready, so load balancers stop sending first (ms; 5000 suits
    /// Kubernetes).
    #[arg(long, env = "KEEL_SHUTDOWN_DELAY_MS", default_value_t = 0)]
    pub shutdown_delay_ms: u64,

    /// How long shutdown waits for in-flight requests to finish (seconds).
    #[arg(long, env = "KEEL_SHUTDOWN_GRACE_SECS", default_value_t = 4)]
    pub shutdown_grace_secs: u64,
}

impl ShutdownConfig {
    /// The pause between reporting not ready and refusing connections.
    pub fn delay(&self) -> Duration {
        Duration::from_millis(self.shutdown_delay_ms)
    }

    /// The drain timeout.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            shutdown_delay_ms: 0,
            shutdown_grace_secs: 4,
        }
    }
}

/// The database pool.
#[derive(Debug, Clone, Args)]
pub struct PoolConfig {
    /// Connections per service process.
    #[arg(long, env = "KEEL_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,

    /// The longest one SQL statement may run (milliseconds).
    #[arg(long, env = "KEEL_DB_STATEMENT_TIMEOUT_MS", default_value_t = 10_000)]
    pub db_statement_timeout_ms: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            db_pool_size: 16,
            db_statement_timeout_ms: 10_000,
        }
    }
}

/// Logs and traces.
#[derive(Debug, Clone, Args)]
pub struct TelemetryConfig {
    /// The log format.
    #[arg(long, env = "KEEL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// Which logs to keep, as a tracing filter (e.g. `info,keel_auth=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,

    /// Where to export traces over OTLP/gRPC (e.g. `http://127.0.0.1:4317`);
    /// unset, no traces leave the process.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_filter: "info".into(),
            otlp_endpoint: None,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for collectors.
    Json,
    /// Human-readable lines, for a terminal.
    Pretty,
}

/// Who issues access tokens and for whom; every service checks both.
#[derive(Debug, Clone, Args)]
pub struct TokenConfig {
    /// The `iss` of access tokens.
    #[arg(long, env = "KEEL_TOKEN_ISSUER", default_value = "keel-auth")]
    pub token_issuer: String,

    /// The `aud` of access tokens.
    #[arg(long, env = "KEEL_TOKEN_AUDIENCE", default_value = "keel")]
    pub token_audience: String,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            token_issuer: "keel-auth".into(),
            token_audience: "keel".into(),
        }
    }
}

/// The settings every service takes besides its own: how it verifies
/// tokens, its database pool, and its server.
#[derive(Debug, Clone, Default, Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub tokens: TokenConfig,

    #[command(flatten)]
    pub pool: PoolConfig,

    #[command(flatten)]
    pub server: ServerConfig,
}

/// Parses one settings group from `args` (the first is the program name),
/// with the environment filling in what they leave out: how a process that
/// runs several services builds each one's settings.
pub fn from_args<'a, T: Args>(args: impl IntoIterator<Item = &'a str>) -> anyhow::Result<T> {
    let command = T::augment_args(clap::Command::new("keel"));
    let matches = command.try_get_matches_from(args)?;
    Ok(T::from_arg_matches(&matches)?)
}
