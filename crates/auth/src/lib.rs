//! Keel's auth service: credentials, tokens and sessions, owning the
//! `keel_auth` database.
//!
//! [`Auth::build`] prepares the service from its configuration; [`run`]
//! serves it until shutdown.

use std::{sync::Arc, time::Duration as StdDuration};

use anyhow::Context as _;
use clap::{Args, FromArgMatches as _};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use keel::auth::v1::{Jwk, auth_service_server::AuthServiceServer};
use keel_platform::{
    config::{PoolConfig, ServerConfig, TokenConfig},
    db,
    events::EventType,
    registry::{self, Context, ServiceFuture, ServiceSpec, Serving},
    scopes,
    service_token::{TokenFuture, TokenProvider},
    verifier::{KeySource, KeysFuture, Verifier},
};

pub mod clients;
pub mod domain;
pub mod keys;
pub mod password;
pub mod schema;
pub mod service;
pub mod store;

pub use service::Auth;

use crate::{
    clients::{ServiceClient, ServiceClients},
    keys::KeyRing,
    password::{HashCost, Hasher},
    service::Throttle,
};

/// The service's migrations, embedded in the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The folder the migrations come from (tests fingerprint it).
pub const MIGRATIONS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");

/// The database auth owns.
pub const DATABASE: &str = "keel_auth";

/// The fully-qualified gRPC service name.
pub const SERVICE_NAME: &str = "keel.auth.v1.AuthService";

/// Auth, as the registry knows it.
pub const SERVICE: ServiceSpec = ServiceSpec {
    name: registry::AUTH,
    about: "The auth service: credentials, tokens and sessions.",
    grpc_services: &[SERVICE_NAME],
    default_port: 50051,
    database: DATABASE,
    migrations: || MIGRATIONS,
    migrations_dir: MIGRATIONS_DIR,
    produces: &[
        EventType::UserRegistered,
        EventType::EmailVerificationRequested,
        EventType::PasswordResetRequested,
    ],
    consumes: &[],
    // Auth signs its own service tokens.
    scopes: &[],
    settings: AuthConfig::augment_args,
    start,
};

/// How often a replica re-reads the signing keys (to follow a rotation made
/// by another process).
const KEY_RELOAD_INTERVAL: StdDuration = StdDuration::from_secs(30);

/// Auth's settings.
#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// Proxies whose `x-forwarded-for` names the client (the gateway's
    /// addresses, comma-separated): login throttling and sessions then see
    /// the real client rather than the proxy.
    #[arg(long, env = "KEEL_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// Services that may get tokens: `client_id:secret:scope scope ...`,
    /// several separated by `;`.
    /// (Parsed by [`AuthConfig::service_clients`], whose errors never repeat
    /// a secret.)
    #[arg(long, env = "KEEL_SERVICE_CLIENTS", value_delimiter = ';', hide_env_values = true)]
    pub service_clients: Vec<String>,

    /// Failed logins allowed per account, and per client address, within the
    /// window; further attempts are refused until it passes.
    #[arg(long, env = "KEEL_LOGIN_MAX_FAILURES", default_value_t = 5)]
    pub login_max_failures: u32,

    /// The failed-login window (seconds).
    #[arg(long, env = "KEEL_LOGIN_FAILURE_WINDOW_SECS", default_value_t = 900)]
    pub login_failure_window_secs: u32,

    /// argon2id memory cost (KiB); never below OWASP's 19456.
    #[arg(long, env = "KEEL_ARGON2_MEMORY_KIB", default_value_t = 19_456)]
    pub argon2_memory_kib: u32,

    /// argon2id passes; never below 2.
    #[arg(long, env = "KEEL_ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,

    /// Password hashes computed at once (default: one per CPU).
    #[arg(long, env = "KEEL_HASH_CONCURRENCY")]
    pub hash_concurrency: Option<usize>,

    #[command(flatten)]
    pub tokens: TokenConfig,

    #[command(flatten)]
    pub pool: PoolConfig,

    #[command(flatten)]
    pub server: ServerConfig,
}

impl AuthConfig {
    /// Parses `args` (the first is the program name), with the environment
    /// filling in what they leave out.
    pub fn from_args<'a>(args: impl IntoIterator<Item = &'a str>) -> anyhow::Result<Self> {
        keel_platform::config::from_args(args)
    }

    /// The configured service clients, and `extra` ones (see
    /// [`Context::suite_clients`]).
    pub fn service_clients(&self, extra: &[String]) -> anyhow::Result<Vec<ServiceClient>> {
        self.service_clients
            .iter()
            .chain(extra)
            .filter(|spec| !spec.trim().is_empty())
            .map(|spec| {
                spec.parse()
                    .map_err(|err| anyhow::anyhow!("KEEL_SERVICE_CLIENTS: {err}"))
            })
            .collect()
    }

    /// The argon2id cost, refusing anything weaker than OWASP's minimum.
    pub fn hash_cost(&self) -> anyhow::Result<HashCost> {
        let minimum = HashCost::default();
        anyhow::ensure!(
            self.argon2_memory_kib >= minimum.memory_kib && self.argon2_iterations >= minimum.iterations,
            "argon2id cost below m={} KiB, t={} is not allowed",
            minimum.memory_kib,
            minimum.iterations
        );
        Ok(HashCost {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
            parallelism: 1,
        })
    }
}

impl Auth {
    /// Connects to the (migrated) database at `url` and loads the keys;
    /// `extra_clients` are service clients besides the configured ones.
    pub async fn build(config: &AuthConfig, url: &str, extra_clients: &[String]) -> anyhow::Result<Self> {
        let pool = db::pool(url, &config.pool)?;
        service::fill_email_skeletons(&pool).await?;
        let keys = KeyRing::load(&pool, &config.tokens.token_issuer, &config.tokens.token_audience)
            .await
            .context("loading the signing keys")?;
        let concurrency = config
            .hash_concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        Ok(Auth {
            pool,
            hasher: Hasher::new(config.hash_cost()?, concurrency)?,
            keys,
            clients: Arc::new(ServiceClients::new(config.service_clients(extra_clients)?)),
            throttle: Throttle {
                max_failures: i64::from(config.login_max_failures),
                window: chrono::Duration::seconds(i64::from(config.login_failure_window_secs)),
            },
            trusted_proxies: config.trusted_proxies.clone().into(),
        })
    }

    /// The verifier for tokens auth itself issued: keys come straight from
    /// the key ring, not over the network.
    pub fn verifier(&self, tokens: &TokenConfig) -> Arc<Verifier> {
        Arc::new(Verifier::new(
            &tokens.token_issuer,
            &tokens.token_audience,
            Arc::new(LocalKeys {
                keys: self.keys.clone(),
                pool: self.pool.clone(),
            }),
        ))
    }

    /// The key ring (for rotation from the command line).
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// The database pool.
    pub fn pool(&self) -> &db::Pool {
        &self.pool
    }
}

/// Auth's own keys for its verifier. Asked only when a token names an unknown
/// key, so it re-reads the database first: another replica may have rotated.
struct LocalKeys {
    keys: KeyRing,
    pool: db::Pool,
}

impl std::fmt::Debug for LocalKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeys").finish_non_exhaustive()
    }
}

impl KeySource for LocalKeys {
    fn fetch(&self) -> KeysFuture<'_> {
        Box::pin(async move {
            self.keys.reload(&self.pool).await?;
            Ok::<Vec<Jwk>, anyhow::Error>(self.keys.jwks().await)
        })
    }
}

/// Tokens for auth's own relay, signed in-process (auth is the issuer).
#[derive(Debug)]
struct OwnServiceTokens(KeyRing);

impl TokenProvider for OwnServiceTokens {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            let scopes = [scopes::EVENTS_DELIVER.to_owned()];
            Ok(self.0.service_token(registry::AUTH, &scopes).await?.0)
        })
    }
}

fn start(settings: &clap::ArgMatches, context: Context) -> anyhow::Result<ServiceFuture> {
    let config = AuthConfig::from_arg_matches(settings)?;
    Ok(Box::pin(run(config, context)))
}

/// Serves auth until the context's shutdown. Its database must exist; it is
/// migrated first.
pub async fn run(config: AuthConfig, context: Context) -> anyhow::Result<()> {
    let url = context.database_url.clone();
    db::migrate(&url, MIGRATIONS).await.context("migrating keel_auth")?;
    let auth = Auth::build(&config, &url, &context.suite_clients).await?;
    let verifier = auth.verifier(&config.tokens);

    let reload = {
        let (keys, pool, shutdown) = (auth.keys.clone(), auth.pool.clone(), context.shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(KEY_RELOAD_INTERVAL) => {}
                    () = shutdown.cancelled() => return,
                }
                if let Err(err) = keys.reload(&pool).await {
                    tracing::warn!(error = format!("{err:#}"), "re-reading the signing keys failed");
                }
            }
        })
    };
    let serving = Serving {
        routes: tonic::service::Routes::new(AuthServiceServer::new(auth.clone())),
        verifier,
        pool: auth.pool.clone(),
        tokens: Some(Arc::new(OwnServiceTokens(auth.keys.clone()))),
        server: config.server.clone(),
    };
    let result = context.serve(serving).await;
    reload.abort();
    result
}
