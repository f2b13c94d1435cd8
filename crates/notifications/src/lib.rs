//! Keel's notifications service: it turns Keel's events into an in-app
//! inbox (listed, marked read and streamed live), email over SMTP and signed
//! webhooks, as each user's preferences choose, and owns the
//! `keel_notifications` database.
//!
//! The operations live in [`app`], one file per capability; the gRPC
//! adapters in [`service`]; the settings in [`config`]. Consuming an event
//! writes the inbox entry and one delivery row per (event, channel, target)
//! in the event's transaction; the [`delivery`] workers send those rows at
//! least once, retrying with backoff and dead-lettering what never goes
//! through. [`email`] and [`webhook`] are the two channels they send on;
//! [`live`] carries new inbox entries to open streams across replicas.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args as _;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use keel::{
    events::v1::event_sink_server::EventSinkServer,
    notifications::v1::notifications_service_server::NotificationsServiceServer,
};
use keel_platform::{
    db,
    events::EventType,
    registry::{self, Context, Service, ServiceSpec, Serving},
};

pub mod app;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod email;
pub mod live;
pub mod messages;
pub mod schema;
pub mod service;
pub mod store;
pub mod webhook;

pub use app::Notifications;
pub use config::{CrashPoint, DeliveryConfig, EmailConfig, InboxConfig, NotificationsConfig, WebhookConfig};

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
    name: domain::NAME,
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
    start: registry::start::<NotificationsConfig>,
};

/// Serves notifications until the context's shutdown, with the delivery
/// workers beside it. Its database must exist; it is migrated first.
impl Service for NotificationsConfig {
    async fn run(self, context: Context) -> anyhow::Result<()> {
        let config = self;
        let pool = context.migrated_pool(&config.service.pool).await?;
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
        let notifications = Notifications::new(
            pool.clone(),
            context.event_producers.clone(),
            hub,
            templates.clone(),
            webhooks.clone(),
            link_key.clone(),
        )
        .with_secrets_key(config.secrets_key.clone())
        .with_streams(&config.inbox, context.shutdown.clone());
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
                .add_service(EventSinkServer::new(notifications.clone())),
            verifier: context.verifier(&config.service.tokens)?,
            pool,
            tokens: None,
            server: config.service.server.clone(),
            event_sink: Some(Arc::new(notifications)),
        };
        let served = context.serve(serving).await;
        // What a worker had in flight is sent again once its lease ends.
        if tokio::time::timeout(Duration::from_secs(2), delivering).await.is_err() {
            tracing::warn!("the notification workers did not stop in time");
        }
        served
    }
}

/// The key that signs unsubscribe links: the stored one, made on first start.
async fn link_key(pool: &db::Pool) -> anyhow::Result<email::unsubscribe::LinkKey> {
    // rand's thread RNG is a CSPRNG seeded from the OS.
    let candidate: [u8; 32] = rand::random();
    let mut conn = pool.get().await.context("connecting to keel_notifications")?;
    let stored = store::link_keys::get_or_create(&mut conn, &candidate)
        .await
        .context("loading the unsubscribe link key")?;
    let key = <[u8; 32]>::try_from(stored.as_slice()).context("the stored unsubscribe link key is not 32 bytes")?;
    Ok(email::unsubscribe::LinkKey::new(key))
}
