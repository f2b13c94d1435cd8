//! Keel's orders service: a catalog with stock, and orders whose payment is
//! a persisted saga (reserve, charge, record; compensate on failure), owning
//! the `keel_orders` database.
//!
//! The operations live in [`app`], one file per capability (the catalog,
//! placing, paying, cancelling, fulfilling, reading orders, the card
//! gateway's webhook, resuming, reconciling); the gRPC adapters in
//! [`service`], which only parse, call one operation and map its answer; the
//! queries, one module per table group, in [`store`]; the payment providers
//! behind the saga in [`payment`].

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args as _;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use keel::orders::v1::orders_service_server::OrdersServiceServer;
use keel_platform::{
    auth::scopes,
    events::EventType,
    registry::{self, Context, Service, ServiceSpec, Serving},
};

pub mod app;
pub mod config;
pub mod domain;
pub mod metrics;
pub mod payment;
pub mod schema;
pub mod service;
pub mod status;
pub mod store;

pub use app::Orders;
pub use config::{CardGatewayConfig, CrashPoint, OrdersConfig, SagaConfig};

/// The service's migrations, embedded in the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The folder the migrations come from (tests fingerprint it).
pub const MIGRATIONS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");

/// The database orders owns.
pub const DATABASE: &str = "keel_orders";

/// The fully-qualified gRPC service name.
pub const SERVICE_NAME: &str = "keel.orders.v1.OrdersService";

/// Orders, as the registry knows it.
pub const SERVICE: ServiceSpec = ServiceSpec {
    name: domain::NAME,
    about: "The orders service: a catalog with stock, and orders paid exactly once.",
    grpc_services: &[SERVICE_NAME],
    default_port: 50053,
    default_metrics_port: 9467,
    database: DATABASE,
    migrations: || MIGRATIONS,
    migrations_dir: MIGRATIONS_DIR,
    produces: &[
        EventType::OrderPlaced,
        EventType::OrderPaid,
        EventType::OrderShipped,
        EventType::OrderCancelled,
    ],
    consumes: &[],
    // Debit and refund for balance payments; deliver for its relay, once a
    // service consumes its events.
    scopes: &[scopes::ACCOUNTS_DEBIT, scopes::ACCOUNTS_REFUND, scopes::EVENTS_DELIVER],
    suite_flags: &[],
    settings: OrdersConfig::augment_args,
    start: registry::start::<OrdersConfig>,
};

/// Serves orders until the context's shutdown, its database migrated first.
impl Service for OrdersConfig {
    async fn run(self, context: Context) -> anyhow::Result<()> {
        let config = self;
        let pool = context.migrated_pool(&config.service.pool).await?;
        let tokens = context.service_tokens()?;
        let accounts = context.service_channel(ACCOUNTS, tokens.clone())?;
        let external = config.card_gateway.provider()?;
        let payments = payment::Providers {
            balance: Arc::new(payment::AccountBalance::new(accounts)),
            external: external.map(|card| Arc::new(card) as Arc<dyn payment::PaymentProvider>),
        };
        let orders = Orders::new(pool.clone(), payments, config.saga.clone())
            .with_webhook_secrets(config.card_gateway.webhook_secrets())
            .with_metrics(metrics::PaymentMetrics::new(&context.metrics));
        let verifier = context.verifier(&config.service.tokens)?;
        let resumer = tokio::spawn(app::resume::run(orders.clone(), context.shutdown.clone()));
        let reconciler = tokio::spawn(app::reconcile::run(orders.clone(), context.shutdown.clone()));
        let serving = Serving {
            routes: tonic::service::Routes::new(OrdersServiceServer::new(orders)),
            verifier,
            pool,
            tokens: Some(tokens),
            server: config.service.server.clone(),
            event_sink: None,
        };
        let served = context.serve(serving).await;
        // The resumer stops at shutdown; an unfinished step is someone else's
        // once its lease ends.
        if tokio::time::timeout(Duration::from_secs(2), resumer).await.is_err() {
            tracing::warn!("the orders resumer did not stop in time");
        }
        reconciler.abort();
        served
    }
}

/// Every order in the orders database at `url`, oldest first: for an
/// operator's reconciliation.
pub async fn all_orders(url: &str) -> anyhow::Result<Vec<store::orders::OrderRow>> {
    use diesel_async::AsyncConnection as _;
    let mut conn = diesel_async::AsyncPgConnection::establish(url)
        .await
        .context("connecting to the orders database")?;
    let mut all = store::orders::all_of(&mut conn, status::PaymentMethod::AccountBalance).await?;
    all.extend(store::orders::all_of(&mut conn, status::PaymentMethod::External).await?);
    Ok(all)
}

/// Which of `ids` are orders in the orders database at `url`.
pub async fn existing_orders(url: &str, ids: &[uuid::Uuid]) -> anyhow::Result<std::collections::BTreeSet<uuid::Uuid>> {
    use diesel_async::AsyncConnection as _;
    let mut conn = diesel_async::AsyncPgConnection::establish(url)
        .await
        .context("connecting to the orders database")?;
    Ok(store::orders::existing(&mut conn, ids).await?)
}

/// The name accounts is registered under: orders reaches it by name, and the
/// registry supplies its URL.
const ACCOUNTS: &str = "accounts";
