//! Where the suite's databases live: a server given by URL, or a private
//! cluster that Keel starts from the machine's PostgreSQL binaries.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use keel_local_postgres::{Durability, LocalPostgres};
use keel_platform::db;

/// How to reach Postgres.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// A Postgres server to use (each service gets its own database on it);
    /// unset, Keel runs a private cluster.
    #[arg(long, env = "KEEL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Where the private cluster keeps its data.
    #[arg(long, env = "KEEL_DATA_DIR", default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,
}

/// `keel migrate`: every service's database, or one.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// Migrate only this service's database: `KEEL_<SERVICE>_DATABASE_URL`
    /// when set (it must exist; nothing is created), else its database on
    /// the server below (created when missing).
    #[arg(value_parser = registered_service)]
    pub service: Option<String>,

    #[command(flatten)]
    pub database: DatabaseArgs,
}

fn registered_service(name: &str) -> Result<String, String> {
    match keel_registry::REGISTRY.get(name) {
        Some(spec) => Ok(spec.name.to_owned()),
        None => Err(format!(
            "no service {name:?}; the services are {}",
            keel_registry::REGISTRY
                .services()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

impl MigrateArgs {
    /// Creates (where allowed) and migrates the chosen databases.
    pub async fn run(&self) -> anyhow::Result<()> {
        let Some(name) = self.service.as_deref() else {
            let database = self.database.open().await?;
            let result = database.prepare_all().await;
            database.close();
            return result;
        };
        let spec = keel_registry::REGISTRY
            .get(name)
            .with_context(|| format!("no service {name:?}"))?;
        // The service's own database and credentials, as `keel serve` reads them.
        if let Ok(url) = std::env::var(spec.env("DATABASE_URL")) {
            tracing::info!(service = spec.name, "migrating its database");
            return db::migrate(&url, (spec.migrations)())
                .await
                .with_context(|| format!("migrating {}", spec.database));
        }
        let database = self.database.open().await?;
        let result = database.prepare(spec.database, (spec.migrations)()).await;
        database.close();
        result
    }
}

/// An open connection to the suite's Postgres.
#[derive(Debug)]
pub struct Database {
    server_url: String,
    cluster: Option<LocalPostgres>,
}

impl DatabaseArgs {
    /// Reaches the configured server, or starts (or reuses) the private
    /// cluster.
    pub async fn open(&self) -> anyhow::Result<Database> {
        if let Some(url) = &self.database_url {
            return Ok(Database {
                server_url: url.clone(),
                cluster: None,
            });
        }
        let root = self.data_dir.join("postgres");
        let cluster = tokio::task::spawn_blocking(move || LocalPostgres::start(&root, Durability::Durable))
            .await
            .context("starting the private cluster")??;
        Ok(Database {
            server_url: cluster.url("postgres"),
            cluster: Some(cluster),
        })
    }
}

impl Database {
    /// The URL of the service database `name`.
    pub fn url(&self, name: &str) -> anyhow::Result<String> {
        db::with_database(&self.server_url, name)
    }

    /// The private cluster, when Keel runs one.
    pub fn cluster(&self) -> Option<&LocalPostgres> {
        self.cluster.as_ref()
    }

    /// Creates and migrates every registered service's database.
    pub async fn prepare_all(&self) -> anyhow::Result<()> {
        for spec in keel_registry::REGISTRY.services() {
            self.prepare(spec.database, (spec.migrations)()).await?;
        }
        Ok(())
    }

    /// Creates database `name` if missing and applies `migrations`.
    pub async fn prepare(&self, name: &str, migrations: diesel_migrations::EmbeddedMigrations) -> anyhow::Result<()> {
        db::ensure_database(&self.server_url, name).await?;
        db::migrate(&self.url(name)?, migrations).await
    }

    /// Stops the private cluster if this process started it.
    pub fn close(self) {
        if let Some(cluster) = self.cluster
            && cluster.started_here()
            && let Err(err) = cluster.stop()
        {
            eprintln!("warning: the private Postgres did not stop cleanly: {err:#}");
        }
    }
}

/// The default folder for the private cluster's data.
pub fn default_data_dir() -> PathBuf {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0);
    std::env::temp_dir().join(format!("keel-{uid}"))
}
