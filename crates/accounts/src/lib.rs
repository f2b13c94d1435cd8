//! Keel's accounts service: a profile per user and a balance kept as an
//! append-only ledger, owning the `keel_accounts` database. It also consumes
//! auth's events (UserRegistered creates the account).

use anyhow::Context as _;
use clap::{Args, FromArgMatches as _};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use keel::{
    accounts::v1::accounts_service_server::AccountsServiceServer, events::v1::event_sink_server::EventSinkServer,
};
use keel_platform::{
    auth::scopes,
    config::{PoolConfig, ServerConfig, TokenConfig},
    db,
    events::{EventProducers, EventType},
    registry::{Context, ServiceFuture, ServiceSpec, Serving},
};

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

/// Accounts, as the registry knows it.
pub const SERVICE: ServiceSpec = ServiceSpec {
    name: "accounts",
    about: "The accounts service: profiles and balances kept as a ledger.",
    grpc_services: &[SERVICE_NAME, EVENT_SINK_NAME],
    default_port: 50052,
    default_metrics_port: 9466,
    database: DATABASE,
    migrations: || MIGRATIONS,
    migrations_dir: MIGRATIONS_DIR,
    produces: &[EventType::BalanceChanged],
    consumes: &[EventType::UserRegistered],
    scopes: &[scopes::EVENTS_DELIVER],
    suite_flags: &[],
    settings: AccountsConfig::augment_args,
    start,
};

/// Accounts' settings.
#[derive(Debug, Clone, Args)]
pub struct AccountsConfig {
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
    /// Connects to the (migrated) database at `url`; its event sink accepts
    /// each event type only from `event_producers`' producer of it.
    pub fn build(config: &AccountsConfig, url: &str, event_producers: EventProducers) -> anyhow::Result<Self> {
        let currency = domain::Currency::parse("currency", &config.currency)
            .map_err(|v| anyhow::anyhow!("KEEL_ACCOUNTS_CURRENCY {}", v.description))?;
        Ok(Accounts {
            pool: db::pool(url, &config.pool)?,
            currency,
            event_producers,
        })
    }

    /// The database pool.
    pub fn pool(&self) -> &db::Pool {
        &self.pool
    }
}

fn start(settings: &clap::ArgMatches, context: Context) -> anyhow::Result<ServiceFuture> {
    let config = AccountsConfig::from_arg_matches(settings)?;
    Ok(Box::pin(run(config, context)))
}

/// Serves accounts until the context's shutdown. Its database must exist; it
/// is migrated first.
pub async fn run(config: AccountsConfig, context: Context) -> anyhow::Result<()> {
    db::migrate(&context.database_url, MIGRATIONS)
        .await
        .context("migrating keel_accounts")?;
    let accounts = Accounts::build(&config, &context.database_url, context.event_producers.clone())?;
    let verifier = context.verifier(&config.tokens)?;
    // Only needed once someone consumes BalanceChanged.
    let tokens = if context.subscribers.is_empty() {
        None
    } else {
        Some(context.service_tokens()?)
    };
    let serving = Serving {
        routes: tonic::service::Routes::new(AccountsServiceServer::new(accounts.clone()))
            .add_service(EventSinkServer::new(accounts.clone())),
        verifier,
        pool: accounts.pool.clone(),
        tokens,
        server: config.server.clone(),
    };
    context.serve(serving).await
}

/// Every debit whose request id starts with `prefix`, with what its refunds
/// gave back: for an operator's reconciliation (orders' keys start with
/// `order:`).
pub async fn debits_by_key_prefix(url: &str, prefix: &str) -> anyhow::Result<Vec<store::KeyedDebit>> {
    use diesel_async::AsyncConnection as _;
    let mut conn = diesel_async::AsyncPgConnection::establish(url)
        .await
        .context("connecting to the accounts database")?;
    Ok(store::debits_by_key_prefix(&mut conn, prefix).await?)
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
