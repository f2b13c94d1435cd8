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
    auth::scopes,
    auth::service_token::{TokenFuture, TokenProvider},
    auth::verifier::{KeySource, KeysFuture, Verifier},
    config::{PoolConfig, ServerConfig, TokenConfig},
    db,
    events::EventType,
    registry::{self, Context, ServiceFuture, ServiceSpec, Serving},
    sealing::SealingKey,
};
use secrecy::{ExposeSecret, SecretString};

pub mod clients;
pub mod domain;
pub mod keys;
pub mod password;
pub mod revocations;
pub mod schema;
pub mod service;
pub mod store;

pub use service::Auth;

use crate::{
    clients::{ServiceClient, ServiceClients},
    keys::KeyRing,
    password::{HashCost, Hasher},
    service::{CallLimits, LoginThrottle, SessionLimits},
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
    default_metrics_port: 9465,
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
    // The gateway calls from loopback and names the client it serves.
    suite_flags: &["--trusted-proxies", "127.0.0.1"],
    settings: AuthConfig::augment_args,
    start,
};

/// How often throttle counters whose windows have passed are deleted.
const THROTTLE_PRUNE_INTERVAL: StdDuration = StdDuration::from_secs(60);

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

    /// Failed logins allowed per account from one client address (an IPv6
    /// client: its /64) within the window; further attempts from there are
    /// refused until the window ends.
    #[arg(long, env = "KEEL_LOGIN_MAX_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_max_failures: u32,

    /// Failed logins allowed per client address across all accounts within
    /// the window (password spraying).
    #[arg(long, env = "KEEL_LOGIN_MAX_ADDRESS_FAILURES", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_max_address_failures: u32,

    /// The failed-login window (seconds).
    #[arg(long, env = "KEEL_LOGIN_FAILURE_WINDOW_SECS", default_value_t = 900, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_failure_window_secs: u32,

    /// Failures of one account within the window, from all addresses, after
    /// which every address must wait before each further attempt at it (the
    /// account slows down; it is never locked).
    #[arg(long, env = "KEEL_LOGIN_SLOWDOWN_AFTER", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_slowdown_after: u32,

    /// The first such wait (milliseconds); it doubles with each further
    /// failure of the account.
    #[arg(long, env = "KEEL_LOGIN_SLOWDOWN_BASE_MS", default_value_t = 1_000)]
    pub login_slowdown_base_ms: u64,

    /// The longest wait (milliseconds): the most a correct password from an
    /// address that has not failed can be held back.
    #[arg(long, env = "KEEL_LOGIN_SLOWDOWN_MAX_MS", default_value_t = 30_000)]
    pub login_slowdown_max_ms: u64,

    /// Register calls allowed per client address within the call-limit window.
    #[arg(long, env = "KEEL_REGISTER_LIMIT", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub register_limit: u32,

    /// RequestPasswordReset calls allowed per email within the call-limit
    /// window (mails one inbox can be sent).
    #[arg(long, env = "KEEL_PASSWORD_RESET_LIMIT_PER_EMAIL", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub password_reset_limit_per_email: u32,

    /// RequestPasswordReset calls allowed per client address within the
    /// call-limit window.
    #[arg(long, env = "KEEL_PASSWORD_RESET_LIMIT_PER_ADDRESS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub password_reset_limit_per_address: u32,

    /// IssueServiceToken calls allowed per client id and client address within
    /// the call-limit window.
    #[arg(long, env = "KEEL_SERVICE_TOKEN_LIMIT", default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..))]
    pub service_token_limit: u32,

    /// The window of the Register, RequestPasswordReset and IssueServiceToken
    /// limits (seconds).
    #[arg(long, env = "KEEL_CALL_LIMIT_WINDOW_SECS", default_value_t = 3_600, value_parser = clap::value_parser!(u32).range(1..))]
    pub call_limit_window_secs: u32,

    /// A session's lifetime from sign-in (seconds); refreshing does not
    /// extend it.
    #[arg(long, env = "KEEL_SESSION_MAX_LIFETIME_SECS", default_value_t = 30 * 86_400, value_parser = clap::value_parser!(u32).range(1..))]
    pub session_max_lifetime_secs: u32,

    /// A session not refreshed for this long ends (seconds).
    #[arg(long, env = "KEEL_SESSION_IDLE_TIMEOUT_SECS", default_value_t = 7 * 86_400, value_parser = clap::value_parser!(u32).range(1..))]
    pub session_idle_timeout_secs: u32,

    /// The key (32 bytes, base64) that seals the one-time tokens in auth's
    /// events for the service that mails them, which holds the same key.
    /// Without it, those events carry no token.
    #[arg(long, env = "KEEL_EVENT_SECRETS_KEY", hide_env_values = true)]
    pub event_secrets_key: Option<SealingKey>,

    /// The key-encryption key (32 bytes, base64) that seals the token signing
    /// keys in auth's database. Without it they are stored unencrypted (auth
    /// warns at start).
    #[arg(long, env = "KEEL_AUTH_KEY_ENCRYPTION_KEY", hide_env_values = true)]
    pub key_encryption_key: Option<SealingKey>,

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
    pub fn service_clients(&self, extra: &[SecretString]) -> anyhow::Result<Vec<ServiceClient>> {
        self.service_clients
            .iter()
            .map(String::as_str)
            .chain(extra.iter().map(ExposeSecret::expose_secret))
            .filter(|spec| !spec.trim().is_empty())
            .map(|spec| {
                spec.parse()
                    .map_err(|err| anyhow::anyhow!("KEEL_SERVICE_CLIENTS: {err}"))
            })
            .collect()
    }

    /// The failed-login throttle.
    pub fn login_throttle(&self) -> LoginThrottle {
        let int = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
        LoginThrottle {
            max_failures: int(self.login_max_failures),
            max_address_failures: int(self.login_max_address_failures),
            slowdown_after: int(self.login_slowdown_after),
            slowdown_base: StdDuration::from_millis(self.login_slowdown_base_ms),
            slowdown_max: StdDuration::from_millis(self.login_slowdown_max_ms),
            window: StdDuration::from_secs(u64::from(self.login_failure_window_secs)),
        }
    }

    /// The limits of Register, RequestPasswordReset and IssueServiceToken.
    pub fn call_limits(&self) -> CallLimits {
        let int = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
        CallLimits {
            register_per_address: int(self.register_limit),
            reset_per_email: int(self.password_reset_limit_per_email),
            reset_per_address: int(self.password_reset_limit_per_address),
            service_token_per_client: int(self.service_token_limit),
            window: StdDuration::from_secs(u64::from(self.call_limit_window_secs)),
        }
    }

    /// How long sessions last.
    pub fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            max_lifetime: chrono::Duration::seconds(i64::from(self.session_max_lifetime_secs)),
            idle_timeout: chrono::Duration::seconds(i64::from(self.session_idle_timeout_secs)),
        }
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
    pub async fn build(config: &AuthConfig, url: &str, extra_clients: &[SecretString]) -> anyhow::Result<Self> {
        let pool = db::pool(url, &config.pool)?;
        service::fill_email_skeletons(&pool).await?;
        let keys = KeyRing::load(
            &pool,
            &config.tokens.token_issuer,
            &config.tokens.token_audience,
            config.key_encryption_key.clone(),
        )
        .await
        .context("loading the signing keys")?;
        if config.event_secrets_key.is_none() {
            tracing::warn!(
                "KEEL_EVENT_SECRETS_KEY is not set: password-reset and email-verification events carry \
                 no token, so no mail can carry one"
            );
        }
        let concurrency = config
            .hash_concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let revocations = revocations::RevocationFeed::new(pool.clone());
        Ok(Auth {
            pool,
            hasher: Hasher::new(config.hash_cost()?, concurrency)?,
            keys,
            clients: Arc::new(ServiceClients::new(config.service_clients(extra_clients)?)),
            login_throttle: config.login_throttle(),
            call_limits: config.call_limits(),
            session_limits: config.session_limits(),
            trusted_proxies: config.trusted_proxies.clone().into(),
            revocations,
            event_secrets: config.event_secrets_key.clone(),
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
    auth.hasher.register_metrics(&context.metrics);
    let verifier = auth.verifier(&config.tokens);
    let feed = tokio::spawn(auth.revocations.clone().run(url.clone(), context.shutdown.clone()));
    verifier.follow_revocations(Arc::new(auth.revocations.clone()), context.shutdown.clone());

    let reload = {
        let (keys, pool, shutdown) = (auth.keys.clone(), auth.pool.clone(), context.shutdown.clone());
        let reload_every = keys::KEY_RELOAD_INTERVAL.to_std().unwrap_or(StdDuration::from_secs(30));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(reload_every) => {}
                    () = shutdown.cancelled() => return,
                }
                if let Err(err) = keys.reload(&pool).await {
                    tracing::warn!(error = format!("{err:#}"), "re-reading the signing keys failed");
                }
            }
        })
    };
    let prune = {
        let (auth, shutdown) = (auth.clone(), context.shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(THROTTLE_PRUNE_INTERVAL) => {}
                    () = shutdown.cancelled() => return,
                }
                if let Err(err) = auth.prune_throttle_counters().await {
                    tracing::warn!(error = format!("{err:#}"), "pruning throttle counters failed");
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
    feed.abort();
    prune.abort();
    result
}
