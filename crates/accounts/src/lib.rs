//! Keel's accounts service: a profile per user and a balance kept as an
//! append-only ledger, owning the `keel_accounts` database. It also consumes
//! auth's events (UserRegistered creates the account).

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use clap::Args;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use keel::{
    accounts::v1::accounts_service_server::AccountsServiceServer, events::v1::event_sink_server::EventSinkServer,
};
use keel_platform::{
    config::{PoolConfig, ServerConfig, TokenConfig},
    db,
    server::GrpcServer,
    verifier::{GrpcKeySource, Verifier},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod domain;
pub mod schema;
pub mod service;
pub mod store;

pub use service::Accounts;

/// The service's migrations, embedded in the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The folder the migrations come from (tests fingerprint it).
pub const MIGRATIONS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");

/// The database accounts owns.
pub const DATABASE: &str = "keel_accounts";

/// The fully-qualified gRPC service name.
pub const SERVICE_NAME: &str = "keel.accounts.v1.AccountsService";

/// The event sink's gRPC service name.
pub const EVENT_SINK_NAME: &str = "keel.events.v1.EventSink";

/// The event types accounts consumes.
pub const CONSUMED_EVENTS: &[&str] = &["user.registered"];

/// Accounts' settings.
#[derive(Debug, Clone, Args)]
pub struct AccountsConfig {
    /// Where accounts listens for gRPC.
    #[arg(
        long = "accounts-listen",
        env = "KEEL_ACCOUNTS_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    pub listen: SocketAddr,

    /// Accounts' database (default: a `keel_accounts` database on the server
    /// of KEEL_DATABASE_URL).
    #[arg(long, env = "KEEL_ACCOUNTS_DATABASE_URL", hide_env_values = true)]
    pub accounts_database_url: Option<String>,

    /// Where auth serves gRPC (for its token signing keys).
    #[arg(long, env = "KEEL_AUTH_URL", default_value = "http://127.0.0.1:50051")]
    pub auth_url: String,

    /// The currency of new accounts (ISO 4217).
    #[arg(long, env = "KEEL_ACCOUNTS_CURRENCY", default_value = "USD")]
    pub currency: String,

    #[command(flatten)]
    pub tokens: TokenConfig,

    #[command(flatten)]
    pub pool: PoolConfig,

    #[command(flatten)]
    pub server: ServerConfig,
}

impl AccountsConfig {
    /// Parses `args` (the first is the program name), with the environment
    /// filling in what they leave out.
    pub fn from_args<'a>(args: impl IntoIterator<Item = &'a str>) -> anyhow::Result<Self> {
        keel_platform::config::from_args(args)
    }
}

impl Accounts {
    /// Connects to the (migrated) database at `url`.
    pub fn build(config: &AccountsConfig, url: &str) -> anyhow::Result<Self> {
        let currency = domain::Currency::parse("currency", &config.currency)
            .map_err(|v| anyhow::anyhow!("KEEL_ACCOUNTS_CURRENCY {}", v.description))?;
        Ok(Accounts {
            pool: db::pool(url, &config.pool)?,
            currency,
        })
    }

    /// The database pool.
    pub fn pool(&self) -> &db::Pool {
        &self.pool
    }
}

/// Serves accounts on `listener` until `shutdown` is cancelled. The database
/// at `url` must exist; it is migrated first.
pub async fn run(
    config: AccountsConfig,
    url: String,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    db::migrate(&url, MIGRATIONS).await.context("migrating keel_accounts")?;
    let accounts = Accounts::build(&config, &url)?;
    let auth = tonic::transport::Channel::from_shared(config.auth_url.clone())
        .context("KEEL_AUTH_URL is not a URL")?
        .connect_lazy();
    let verifier = Arc::new(Verifier::new(
        &config.tokens.token_issuer,
        &config.tokens.token_audience,
        Arc::new(GrpcKeySource::new(auth)),
    ));
    let routes = tonic::service::Routes::new(AccountsServiceServer::new(accounts.clone()))
        .add_service(EventSinkServer::new(accounts.clone()));
    let server = GrpcServer {
        service_names: vec![SERVICE_NAME, EVENT_SINK_NAME],
        routes,
        verifier,
        database_url: url.clone(),
        config: config.server.clone(),
    };
    server.run(listener, shutdown).await
}

/// Checks every account's ledger against its balance; returns the accounts
/// checked and those that disagree.
pub async fn verify_ledger(url: &str) -> anyhow::Result<(i64, Vec<store::LedgerMismatch>)> {
    use diesel_async::AsyncConnection as _;
    let mut conn = diesel_async::AsyncPgConnection::establish(url)
        .await
        .context("connecting to the accounts database")?;
    let count = store::account_count(&mut conn).await?;
    let mismatches = store::ledger_mismatches(&mut conn).await?;
    Ok((count, mismatches))
}
