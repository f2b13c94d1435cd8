//! Keel's orders service: a catalog with stock, and orders whose payment is
//! a persisted saga (reserve, charge, record; compensate on failure), owning
//! the `keel_orders` database.
//!
//! The saga's steps live in [`saga`]; the payment providers behind it in
//! [`payment`]; the worker that finishes what a crash or an outage left
//! unfinished in [`resumer`].

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Args, FromArgMatches as _};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use keel::orders::v1::orders_service_server::OrdersServiceServer;
use keel_platform::{
    config::{PoolConfig, ServerConfig, TokenConfig},
    db,
    events::EventType,
    registry::{Context, ServiceFuture, ServiceSpec, Serving},
    scopes,
};

pub mod domain;
pub mod metrics;
pub mod payment;
pub mod reconcile;
pub mod resumer;
pub mod saga;
pub mod schema;
pub mod service;
pub mod status;
pub mod store;

pub use service::Orders;

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
    name: "orders",
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
    start,
};

/// Orders' settings.
#[derive(Debug, Clone, Args)]
pub struct OrdersConfig {
    #[command(flatten)]
    pub saga: SagaConfig,

    #[command(flatten)]
    pub card_gateway: CardGatewayConfig,

    #[command(flatten)]
    pub tokens: TokenConfig,

    #[command(flatten)]
    pub pool: PoolConfig,

    #[command(flatten)]
    pub server: ServerConfig,
}

/// The external card gateway (Stripe's API); unset, PAYMENT_METHOD_EXTERNAL
/// is refused with PAYMENT_METHOD_UNAVAILABLE.
#[derive(Clone, Args)]
pub struct CardGatewayConfig {
    /// The card gateway's base URL (`https://api.stripe.com`, or a stand-in).
    #[arg(long, env = "KEEL_ORDERS_CARD_GATEWAY_URL")]
    pub card_gateway_url: Option<String>,

    /// The secret API key, sent as the bearer token.
    #[arg(long, env = "KEEL_ORDERS_CARD_GATEWAY_SECRET_KEY", hide_env_values = true)]
    pub card_gateway_secret_key: Option<String>,

    /// The webhook signing secrets (`whsec_...`), comma-separated: during a
    /// rotation give both, the new one first.
    #[arg(
        long,
        env = "KEEL_ORDERS_CARD_WEBHOOK_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub card_webhook_secrets: Vec<String>,

    /// How long one call to the card gateway may take (milliseconds); after
    /// that its outcome counts as unknown and the resumer asks again.
    #[arg(long, env = "KEEL_ORDERS_CARD_GATEWAY_TIMEOUT_MS", default_value_t = 10_000)]
    pub card_gateway_timeout_ms: u64,
}

impl std::fmt::Debug for CardGatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardGatewayConfig")
            .field("card_gateway_url", &self.card_gateway_url)
            .field("card_gateway_timeout_ms", &self.card_gateway_timeout_ms)
            .finish_non_exhaustive()
    }
}

impl CardGatewayConfig {
    /// The card provider, when a gateway is configured.
    pub fn provider(&self) -> anyhow::Result<Option<payment::CardGateway>> {
        let Some(url) = &self.card_gateway_url else {
            return Ok(None);
        };
        let key = self
            .card_gateway_secret_key
            .clone()
            .context("KEEL_ORDERS_CARD_GATEWAY_URL is set, so KEEL_ORDERS_CARD_GATEWAY_SECRET_KEY must be too")?;
        if self.card_webhook_secrets.iter().all(|s| s.trim().is_empty()) {
            tracing::warn!(
                "KEEL_ORDERS_CARD_WEBHOOK_SECRETS is not set: card gateway webhooks are refused, and payments \
                 that need 3-D Secure settle only when the resumer asks the gateway"
            );
        }
        let timeout = Duration::from_millis(self.card_gateway_timeout_ms.max(1));
        Ok(Some(payment::CardGateway::new(url, key, timeout)?))
    }

    /// The webhook secrets given.
    pub fn webhook_secrets(&self) -> Vec<String> {
        self.card_webhook_secrets
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// How the payment saga paces itself.
#[derive(Debug, Clone, Args)]
pub struct SagaConfig {
    /// How long an order may stay unpaid (PENDING_PAYMENT) before the resumer
    /// cancels it, releasing its stock and refunding a charge that still
    /// turns up (seconds).
    #[arg(long, env = "KEEL_ORDERS_PAYMENT_DEADLINE_SECS", default_value_t = 900)]
    pub payment_deadline_secs: u64,

    /// How long whoever works on an order's payment holds it after each of
    /// its writes (it renews the hold before every call to a partner); the
    /// resumer skips held orders. Keep it above the card gateway's timeout
    /// (milliseconds).
    #[arg(long, env = "KEEL_ORDERS_PAYMENT_LEASE_MS", default_value_t = 30_000)]
    pub payment_lease_ms: u64,

    /// How often the resumer looks for orders whose payment or refund is
    /// unfinished (milliseconds); it also looks once at start.
    #[arg(long, env = "KEEL_ORDERS_RESUME_INTERVAL_MS", default_value_t = 5_000)]
    pub resume_interval_ms: u64,

    /// How many orders one resumer works on at once. Each worker claims one
    /// order at a time and goes on until none is left, so a backlog drains
    /// as fast as the payment partners answer.
    #[arg(long, env = "KEEL_ORDERS_RESUME_BATCH", default_value_t = 8,
          value_parser = clap::value_parser!(i64).range(1..=256))]
    pub resume_batch: i64,

    /// How often orders compares its card orders with the card gateway's
    /// charges and refunds what no order may keep (seconds; 0: never).
    #[arg(long, env = "KEEL_ORDERS_RECONCILE_INTERVAL_SECS", default_value_t = 600)]
    pub reconcile_interval_secs: u64,

    /// Test hook: CreateOrder stops after this step as if the process died
    /// there, leaving the rest to the resumer. Never set it in production.
    #[arg(long, env = "KEEL_ORDERS_TEST_CRASH_AFTER", value_enum, hide = true)]
    pub test_crash_after: Option<CrashPoint>,
}

/// Where the test hook [`SagaConfig::test_crash_after`] stops CreateOrder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CrashPoint {
    /// After the transaction that reserves the stock, before the charge.
    Reservation,
    /// After the charge, before its outcome is recorded.
    Charge,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            payment_deadline_secs: 900,
            payment_lease_ms: 30_000,
            resume_interval_ms: 5_000,
            resume_batch: 8,
            reconcile_interval_secs: 600,
            test_crash_after: None,
        }
    }
}

impl SagaConfig {
    /// The payment deadline.
    pub fn payment_deadline(&self) -> Duration {
        Duration::from_secs(self.payment_deadline_secs)
    }

    /// The lease.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.payment_lease_ms.max(1))
    }

    /// Reconciliation's period; None when it is off.
    pub fn reconcile_interval(&self) -> Option<Duration> {
        (self.reconcile_interval_secs > 0).then(|| Duration::from_secs(self.reconcile_interval_secs))
    }

    /// The resumer's period.
    pub fn resume_interval(&self) -> Duration {
        Duration::from_millis(self.resume_interval_ms.max(1))
    }
}

fn start(settings: &clap::ArgMatches, context: Context) -> anyhow::Result<ServiceFuture> {
    let config = OrdersConfig::from_arg_matches(settings)?;
    Ok(Box::pin(run(config, context)))
}

/// Serves orders until the context's shutdown, with the resumer running
/// beside it. Its database must exist; it is migrated first.
pub async fn run(config: OrdersConfig, context: Context) -> anyhow::Result<()> {
    db::migrate(&context.database_url, MIGRATIONS)
        .await
        .context("migrating keel_orders")?;
    let tokens = context.service_tokens()?;
    let accounts = context.service_channel(ACCOUNTS, tokens.clone())?;
    let external = config.card_gateway.provider()?;
    let payments = payment::Providers {
        balance: Arc::new(payment::AccountBalance::new(accounts)),
        external: external.map(|card| Arc::new(card) as Arc<dyn payment::PaymentProvider>),
    };
    let pool = db::pool(&context.database_url, &config.pool)?;
    let orders = Orders::new(pool.clone(), payments, config.saga.clone())
        .with_webhook_secrets(config.card_gateway.webhook_secrets())
        .with_metrics(metrics::PaymentMetrics::new(&context.metrics));
    let verifier = context.verifier(&config.tokens)?;
    let resumer = tokio::spawn(resumer::run(orders.clone(), context.shutdown.clone()));
    let reconciler = tokio::spawn(reconcile::run(orders.clone(), context.shutdown.clone()));
    let serving = Serving {
        routes: tonic::service::Routes::new(OrdersServiceServer::new(orders)),
        verifier,
        pool,
        tokens: Some(tokens),
        server: config.server.clone(),
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

/// Every order in the orders database at `url`, oldest first: for an
/// operator's reconciliation.
pub async fn all_orders(url: &str) -> anyhow::Result<Vec<store::OrderRow>> {
    use diesel_async::AsyncConnection as _;
    let mut conn = diesel_async::AsyncPgConnection::establish(url)
        .await
        .context("connecting to the orders database")?;
    let mut all = store::orders::all_of(&mut conn, status::PaymentMethod::AccountBalance).await?;
    all.extend(store::orders::all_of(&mut conn, status::PaymentMethod::External).await?);
    Ok(all)
}

/// The name accounts is registered under: orders reaches it by name, and the
/// registry supplies its URL.
const ACCOUNTS: &str = "accounts";
