//! Keel's notifications service: it turns Keel's events into an in-app
//! inbox (listed, marked read and streamed live), email over SMTP and signed
//! webhooks, as each user's preferences choose, and owns the
//! `keel_notifications` database.
//!
//! The event sink (`service/event_sink.rs`) writes the inbox entry and one
//! delivery row per (event, channel, target) in the event's transaction; the
//! [`delivery`] workers send those rows at least once, retrying with backoff
//! and dead-lettering what never goes through. [`email`] and [`webhook`] are
//! the two channels they send on; [`live`] carries new inbox entries to open
//! streams across replicas.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Args, FromArgMatches as _};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use keel::{
    events::v1::event_sink_server::EventSinkServer,
    notifications::v1::notifications_service_server::NotificationsServiceServer,
};
use keel_platform::{
    config::{PoolConfig, ServerConfig, TokenConfig},
    db,
    events::EventType,
    registry::{Context, ServiceFuture, ServiceSpec, Serving},
    sealing::SealingKey,
};

pub mod delivery;
pub mod domain;
pub mod email;
pub mod live;
pub mod messages;
pub mod schema;
pub mod service;
pub mod store;
pub mod webhook;

pub use service::Notifications;

/// The service's migrations, embedded in the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The folder the migrations come from (tests fingerprint it).
pub const MIGRATIONS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");

/// The database notifications owns.
pub const DATABASE: &str = "keel_notifications";

/// The fully-qualified gRPC service name.
pub const SERVICE_NAME: &str = "keel.notifications.v1.NotificationsService";

/// The event sink's gRPC service name.
pub const EVENT_SINK_NAME: &str = "keel.events.v1.EventSink";

/// Notifications, as the registry knows it.
pub const SERVICE: ServiceSpec = ServiceSpec {
    name: "notifications",
    about: "The notifications service: email, signed webhooks and a live in-app inbox.",
    grpc_services: &[SERVICE_NAME, EVENT_SINK_NAME],
    default_port: 50054,
    default_metrics_port: 9468,
    database: DATABASE,
    migrations: || MIGRATIONS,
    migrations_dir: MIGRATIONS_DIR,
    produces: &[],
    // Every event reaches someone.
    consumes: &EventType::ALL,
    scopes: &[],
    suite_flags: &[],
    settings: NotificationsConfig::augment_args,
    start,
};

/// Notifications' settings.
#[derive(Debug, Clone, Args)]
pub struct NotificationsConfig {
    /// Where users reach Keel (the gateway's public URL): the links in mail
    /// (email verification, unsubscribe) start with it.
    #[arg(long, env = "KEEL_PUBLIC_BASE_URL", default_value = "http://127.0.0.1:8080")]
    pub public_base_url: String,

    /// The link a password-reset mail offers, `{token}` standing for the
    /// token (your application's reset page). Unset, the mail gives the token
    /// and the ResetPassword call to send it with.
    #[arg(long, env = "KEEL_NOTIFICATIONS_PASSWORD_RESET_LINK")]
    pub password_reset_link: Option<String>,

    /// The key (32 bytes, base64) auth seals one-time tokens in events with;
    /// notifications opens them to mail them.
    #[arg(long, env = "KEEL_EVENT_SECRETS_KEY", hide_env_values = true)]
    pub event_secrets_key: Option<SealingKey>,

    /// The key (32 bytes, base64) that seals webhook signing secrets in the
    /// database. Without it they are stored as they are (a warning at start).
    #[arg(long, env = "KEEL_NOTIFICATIONS_SECRETS_KEY", hide_env_values = true)]
    pub secrets_key: Option<SealingKey>,

    #[command(flatten)]
    pub email: EmailConfig,

    #[command(flatten)]
    pub webhooks: WebhookConfig,

    #[command(flatten)]
    pub delivery: DeliveryConfig,

    #[command(flatten)]
    pub inbox: InboxConfig,

    #[command(flatten)]
    pub tokens: TokenConfig,

    #[command(flatten)]
    pub pool: PoolConfig,

    #[command(flatten)]
    pub server: ServerConfig,
}

/// How mail leaves.
#[derive(Clone, Args)]
pub struct EmailConfig {
    /// The SMTP server: `smtps://user:pass@host:465` (implicit TLS),
    /// `smtp://user:pass@host:587?tls=required` (STARTTLS) or
    /// `smtp://host:25` (no TLS, for a local relay).
    #[arg(long, env = "KEEL_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// Without an SMTP server, each mail is written here as an `.eml` file
    /// (`keel up` points it at its data folder).
    #[arg(long, env = "KEEL_NOTIFICATIONS_MAIL_DIR")]
    pub mail_dir: Option<PathBuf>,

    /// The sender of every mail.
    #[arg(
        long,
        env = "KEEL_NOTIFICATIONS_MAIL_FROM",
        default_value = "Keel <no-reply@keel.localhost>"
    )]
    pub mail_from: String,

    /// How long one message may take to send, connecting included (ms).
    #[arg(long, env = "KEEL_SMTP_TIMEOUT_MS", default_value_t = 30_000)]
    pub smtp_timeout_ms: u64,
}

impl std::fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailConfig")
            .field("smtp_url", &self.smtp_url.as_ref().map(|_| "…"))
            .field("mail_dir", &self.mail_dir)
            .field("mail_from", &self.mail_from)
            .field("smtp_timeout_ms", &self.smtp_timeout_ms)
            .finish()
    }
}

impl EmailConfig {
    /// The per-message timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.smtp_timeout_ms.max(1))
    }
}

/// How webhooks are sent.
#[derive(Debug, Clone, Args)]
pub struct WebhookConfig {
    /// Allow endpoint URLs that resolve to loopback, private, link-local or
    /// metadata addresses, and plain `http://` (local development and tests
    /// only: it lets users make Keel call into its own network).
    #[arg(long, env = "KEEL_NOTIFICATIONS_WEBHOOK_ALLOW_PRIVATE", default_value_t = false,
          action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,

    /// How long one delivery may take (ms).
    #[arg(long, env = "KEEL_NOTIFICATIONS_WEBHOOK_TIMEOUT_MS", default_value_t = 15_000)]
    pub webhook_timeout_ms: u64,

    /// Multiplies the retry schedule (immediately, 5 s, 5 min, 30 min, 2 h,
    /// 5 h, 10 h, 10 h): 0.001 turns hours into seconds for tests.
    #[arg(long, env = "KEEL_NOTIFICATIONS_WEBHOOK_RETRY_SCALE", default_value_t = 1.0)]
    pub webhook_retry_scale: f64,

    /// An endpoint whose every delivery failed for this long is disabled and
    /// its owner told in the inbox (seconds; 5 days).
    #[arg(
        long,
        env = "KEEL_NOTIFICATIONS_WEBHOOK_DISABLE_AFTER_SECS",
        default_value_t = 432_000
    )]
    pub webhook_disable_after_secs: u64,
}

impl WebhookConfig {
    /// The per-delivery timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.webhook_timeout_ms.max(1))
    }

    /// How long an endpoint may fail before it is disabled.
    pub fn disable_after(&self) -> Duration {
        Duration::from_secs(self.webhook_disable_after_secs)
    }
}

/// How the delivery workers pace themselves.
#[derive(Debug, Clone, Args)]
pub struct DeliveryConfig {
    /// How long a worker holds a claimed delivery; another replica retries
    /// it once the hold ends, so it must exceed the send timeouts (ms).
    #[arg(long, env = "KEEL_NOTIFICATIONS_DELIVERY_LEASE_MS", default_value_t = 60_000)]
    pub delivery_lease_ms: u64,

    /// How often the workers look for due deliveries when no NOTIFY wakes
    /// them (ms).
    #[arg(long, env = "KEEL_NOTIFICATIONS_DELIVERY_POLL_MS", default_value_t = 1_000)]
    pub delivery_poll_ms: u64,

    /// The most deliveries one pass claims (and sends at once).
    #[arg(long, env = "KEEL_NOTIFICATIONS_DELIVERY_BATCH", default_value_t = 32,
          value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub delivery_batch: i64,

    /// The most attempts at one mail before it is dead-lettered.
    #[arg(long, env = "KEEL_NOTIFICATIONS_EMAIL_MAX_ATTEMPTS", default_value_t = 8,
          value_parser = clap::value_parser!(i32).range(1..=100))]
    pub email_max_attempts: i32,

    /// The first email retry's delay; each later one doubles it, with
    /// jitter, up to an hour (ms).
    #[arg(long, env = "KEEL_NOTIFICATIONS_EMAIL_RETRY_BASE_MS", default_value_t = 5_000)]
    pub email_retry_base_ms: u64,

    /// How long finished deliveries (delivered, or dropped because their
    /// endpoint went away) are kept before they are deleted (seconds; dead
    /// letters stay until redelivered).
    #[arg(long, env = "KEEL_NOTIFICATIONS_DELIVERY_RETENTION_SECS", default_value_t = 604_800)]
    pub delivery_retention_secs: u64,
}

impl DeliveryConfig {
    /// The lease.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.delivery_lease_ms.max(1))
    }

    /// The fallback poll period.
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.delivery_poll_ms.max(1))
    }

    /// The first email retry's delay.
    pub fn email_retry_base(&self) -> Duration {
        Duration::from_millis(self.email_retry_base_ms.max(1))
    }

    /// How long finished deliveries are kept.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.delivery_retention_secs)
    }
}

/// Live inbox streams.
#[derive(Debug, Clone, Args)]
pub struct InboxConfig {
    /// How many notifications one stream may have waiting for a slow client.
    #[arg(long, env = "KEEL_NOTIFICATIONS_STREAM_BUFFER", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub stream_buffer: u32,

    /// How long a stream's buffer may stay full; then the stream ends with
    /// ABORTED (STREAM_BEHIND) and the client resumes from its cursor (ms).
    #[arg(long, env = "KEEL_NOTIFICATIONS_STREAM_STALL_MS", default_value_t = 10_000)]
    pub stream_stall_ms: u64,
}

fn start(settings: &clap::ArgMatches, context: Context) -> anyhow::Result<ServiceFuture> {
    let config = NotificationsConfig::from_arg_matches(settings)?;
    Ok(Box::pin(run(config, context)))
}

/// Serves notifications until the context's shutdown, with the delivery
/// workers beside it. Its database must exist; it is migrated first.
pub async fn run(config: NotificationsConfig, context: Context) -> anyhow::Result<()> {
    db::migrate(&context.database_url, MIGRATIONS)
        .await
        .context("migrating keel_notifications")?;
    let pool = db::pool(&context.database_url, &config.pool)?;
    let mut email = config.email.clone();
    if email.smtp_url.is_none() && email.mail_dir.is_none() {
        email.mail_dir = context.data_dir.as_ref().map(|dir| dir.join("mail"));
    }
    let mailer = Arc::new(email::Mailer::new(&email)?);
    tracing::info!(mail = %mailer.describe(), "notifications is ready to send mail");
    if config.event_secrets_key.is_none() {
        tracing::warn!(
            "KEEL_EVENT_SECRETS_KEY is not set: verification and password-reset mail can't carry their tokens \
             and is dead-lettered"
        );
    }
    if config.secrets_key.is_none() {
        tracing::warn!("KEEL_NOTIFICATIONS_SECRETS_KEY is not set: webhook signing secrets are stored unencrypted");
    }
    let templates = Arc::new(email::templates::Templates::new()?);
    let webhooks = Arc::new(webhook::send::Sender::new(&config.webhooks)?);
    let link_key = link_key(&pool).await?;
    let hub = live::Hub::start(context.database_url.clone(), context.shutdown.clone());
    let notifications = Notifications {
        pool: pool.clone(),
        event_producers: context.event_producers.clone(),
        hub,
        templates: templates.clone(),
        webhooks: webhooks.clone(),
        secrets_key: config.secrets_key.clone(),
        link_key,
        stream_buffer: config.inbox.stream_buffer as usize,
        stream_stall: Duration::from_millis(config.inbox.stream_stall_ms.max(1)),
        shutdown: context.shutdown.clone(),
    };
    let workers = delivery::Workers {
        pool: pool.clone(),
        mailer,
        webhooks,
        schedule: webhook::schedule::Schedule::from(&config.webhooks),
        templates,
        links: Arc::new(messages::Links {
            base_url: config.public_base_url.clone(),
            password_reset: config.password_reset_link.clone(),
            unsubscribe_key: link_key,
        }),
        event_secrets: config.event_secrets_key.clone(),
        secrets_key: config.secrets_key.clone(),
        config: config.delivery.clone(),
        disable_after: config.webhooks.disable_after(),
        metrics: delivery::DeliveryMetrics::new(&context.metrics),
    };
    let delivering = tokio::spawn(workers.run(context.database_url.clone(), context.shutdown.clone()));
    let serving = Serving {
        routes: tonic::service::Routes::new(NotificationsServiceServer::new(notifications.clone()))
            .add_service(EventSinkServer::new(notifications)),
        verifier: context.verifier(&config.tokens)?,
        pool,
        tokens: None,
        server: config.server.clone(),
    };
    let served = context.serve(serving).await;
    // What a worker had in flight is sent again once its lease ends.
    if tokio::time::timeout(Duration::from_secs(2), delivering).await.is_err() {
        tracing::warn!("the notification workers did not stop in time");
    }
    served
}

/// The key that signs unsubscribe links: the stored one, made on first start.
async fn link_key(pool: &db::Pool) -> anyhow::Result<[u8; 32]> {
    // rand's thread RNG is a CSPRNG seeded from the OS.
    let candidate: [u8; 32] = rand::random();
    let mut conn = pool.get().await.context("connecting to keel_notifications")?;
    let stored = store::link_keys::get_or_create(&mut conn, &candidate)
        .await
        .context("loading the unsubscribe link key")?;
    <[u8; 32]>::try_from(stored.as_slice()).context("the stored unsubscribe link key is not 32 bytes")
}
