//! Keel's auth service: credentials, tokens and sessions, owning the
//! `keel_auth` database.
//!
//! The operations live in [`app`], one file per capability (registration,
//! login, sessions, passwords, administration, service tokens, the
//! revocation feed); the gRPC adapters in [`service`]; the queries in
//! [`store`]. This file holds the spec and the wiring.

use clap::Args as _;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use keel::auth::v1::auth_service_server::AuthServiceServer;
use keel_platform::{
    events::EventType,
    registry::{self, Context, Service, ServiceSpec, Serving},
};

pub mod app;
pub mod clients;
pub mod config;
pub mod domain;
pub mod keys;
pub mod oidc;
pub mod password;
pub mod schema;
pub mod service;
pub mod store;
pub mod totp;

pub use app::Auth;
pub use config::AuthConfig;

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
    start: registry::start::<AuthConfig>,
};

/// Serves auth until the context's shutdown, its database migrated first.
impl Service for AuthConfig {
    async fn run(self, context: Context) -> anyhow::Result<()> {
        let config = self;
        let pool = context.migrated_pool(&config.service.pool).await?;
        let auth = Auth::build(&config, pool.clone(), &context.suite_clients).await?;
        auth.register_metrics(&context.metrics);
        let verifier = auth.verifier(&config.service.tokens, context.shutdown.clone());
        let feed = tokio::spawn(
            auth.revocation_feed()
                .clone()
                .run(context.database_url.clone(), context.shutdown.clone()),
        );
        let reload = tokio::spawn(app::reload_keys(auth.clone(), context.shutdown.clone()));
        let prune = tokio::spawn(app::throttle::prune(auth.clone(), context.shutdown.clone()));
        let challenges = tokio::spawn(app::second_factor::prune(auth.clone(), context.shutdown.clone()));
        let serving = Serving {
            routes: tonic::service::Routes::new(AuthServiceServer::new(auth.clone())),
            verifier,
            pool,
            tokens: Some(auth.own_service_tokens()),
            server: config.service.server.clone(),
            event_sink: None,
        };
        let served = context.serve(serving).await;
        // None of them holds anything another replica needs.
        for task in [feed, reload, prune, challenges] {
            task.abort();
        }
        served
    }
}
