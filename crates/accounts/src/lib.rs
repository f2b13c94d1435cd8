//! Keel's accounts service: a profile per user and a balance kept as an
//! append-only ledger, owning the `keel_accounts` database. It also consumes
//! auth's events (UserRegistered creates the account).
//!
//! The operations live in [`app`], one file per capability (profiles, the
//! ledger, the events it consumes); the gRPC adapters in [`service`]; the
//! queries in [`store`], one module per table group.

use anyhow::Context as _;
use clap::Args as _;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use keel::{
    accounts::v1::accounts_service_server::AccountsServiceServer, events::v1::event_sink_server::EventSinkServer,
};
use keel_platform::{
    auth::scopes,
    events::EventType,
    registry::{self, Context, Service, ServiceSpec, Serving},
};

pub mod app;
pub mod config;
pub mod domain;
pub mod schema;
pub mod service;
pub mod store;

pub use app::Accounts;
pub use config::AccountsConfig;

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
    name: domain::NAME,
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
    start: registry::start::<AccountsConfig>,
};

/// Serves accounts until the context's shutdown. Its database must exist; it
/// is migrated first.
impl Service for AccountsConfig {
    async fn run(self, context: Context) -> anyhow::Result<()> {
        let config = self;
        let pool = context.migrated_pool(&config.service.pool).await?;
        let accounts = Accounts::new(pool.clone(), config.currency()?, context.event_producers.clone());
        let verifier = context.verifier(&config.service.tokens)?;
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
            pool,
            tokens,
            server: config.service.server.clone(),
            event_sink: Some(std::sync::Arc::new(accounts)),
        };
        context.serve(serving).await
    }
}

/// Every debit whose request id starts with `prefix`, with what its refunds
/// gave back: for an operator's reconciliation (orders' keys start with
/// `order:`).
pub async fn debits_by_key_prefix(url: &str, prefix: &str) -> anyhow::Result<Vec<store::ledger::KeyedDebit>> {
    use diesel_async::AsyncConnection as _;
    let mut conn = diesel_async::AsyncPgConnection::establish(url)
        .await
        .context("connecting to the accounts database")?;
    Ok(store::ledger::debits_by_key_prefix(&mut conn, prefix).await?)
}

/// Checks every account's ledger against its balance; returns the accounts
/// checked and those that disagree.
pub async fn verify_ledger(url: &str) -> anyhow::Result<(i64, Vec<store::ledger::LedgerMismatch>)> {
    use diesel_async::AsyncConnection as _;
    let mut conn = diesel_async::AsyncPgConnection::establish(url)
        .await
        .context("connecting to the accounts database")?;
    let count = store::accounts::count(&mut conn).await?;
    let mismatches = store::ledger::mismatches(&mut conn).await?;
    Ok((count, mismatches))
}
