//! A fresh, migrated database per test.
//!
//! With `KEEL_DATABASE_URL` (or `DATABASE_URL`) set, tests use that server;
//! otherwise a private cluster is started (or reused) under the system's
//! temporary folder. Each service's migrations run once into a template
//! database named after a fingerprint of the migration files; every test then
//! gets `CREATE DATABASE ... TEMPLATE`, which takes milliseconds, and the
//! database is dropped when the test ends.

use std::{
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::Context as _;
use diesel::sql_types::{BigInt, Bool};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use diesel_migrations::EmbeddedMigrations;
use keel_local_postgres::{Durability, LocalPostgres};
use keel_platform::db::{self, quote_ident, quote_literal};

/// The URL of the test server's `postgres` database.
pub fn server_url() -> anyhow::Result<String> {
    static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            if let Some(url) = ["KEEL_DATABASE_URL", "DATABASE_URL"]
                .iter()
                .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
            {
                return db::with_database(&url, "postgres").map_err(|e| format!("{e:#}"));
            }
            // The cluster is shared by every test process and left running
            // for the next run: starting one costs seconds, reusing it none.
            LocalPostgres::start(&test_cluster_root(), Durability::Ephemeral)
                .map(|cluster| cluster.url("postgres"))
                .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn test_cluster_root() -> PathBuf {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0);
    std::env::temp_dir().join(format!("keel-test-postgres-{uid}"))
}

/// What a service's test database is made from.
#[derive(Clone, Copy)]
pub struct Schema {
    /// A short name, e.g. `auth`.
    pub name: &'static str,
    /// The embedded migrations.
    pub migrations: fn() -> EmbeddedMigrations,
    /// Their source folder, fingerprinted so a changed migration gets a new
    /// template.
    pub dir: &'static str,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .finish()
    }
}

/// A database that exists for one test and is dropped after it.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    server: String,
}

impl TestDatabase {
    /// A new database with `schema`'s migrations applied.
    pub async fn create(schema: Schema) -> anyhow::Result<Self> {
        let server = server_url()?;
        let template = ensure_template(&server, schema).await?;
        let name = format!("test_{}_{}", schema.name, uuid::Uuid::now_v7().simple());
        let mut conn = AsyncPgConnection::establish(&server).await?;
        diesel::sql_query(format!(
            "CREATE DATABASE {} TEMPLATE {}",
            quote_ident(&name),
            quote_ident(&template)
        ))
        .execute(&mut conn)
        .await
        .with_context(|| format!("cloning {template}"))?;
        let url = db::with_database(&server, &name)?;
        Ok(TestDatabase { name, url, server })
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs outside async; use a short-lived runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(db::drop_database(&server, &name)).ok()
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// The migrated template for `schema`, created once per fingerprint. An
/// advisory lock keeps concurrent test processes from building it twice.
async fn ensure_template(server: &str, schema: Schema) -> anyhow::Result<String> {
    // The shared migrations run first in every service's database.
    let fingerprint =
        fingerprint(Path::new(schema.dir))? ^ fingerprint(Path::new(db::SHARED_MIGRATIONS_DIR))?.rotate_left(1);
    let template = format!("keel_template_{}_{fingerprint:016x}", schema.name);
    let mut conn = AsyncPgConnection::establish(server).await?;
    let lock_key = i64::from_ne_bytes(fingerprint.to_ne_bytes());
    diesel::sql_query(format!("SELECT pg_advisory_lock({lock_key})"))
        .execute(&mut conn)
        .await?;
    let result = async {
        let ready: Option<bool> = diesel::dsl::select(diesel::dsl::sql::<diesel::sql_types::Nullable<Bool>>(&format!(
            "(SELECT datistemplate FROM pg_database WHERE datname = {})",
            quote_literal(&template)
        )))
        .get_result(&mut conn)
        .await?;
        match ready {
            Some(true) => return Ok(()),
            // A half-built template from a process that died.
            Some(false) => {
                diesel::sql_query(format!("DROP DATABASE {} WITH (FORCE)", quote_ident(&template)))
                    .execute(&mut conn)
                    .await?;
            }
            None => {}
        }
        diesel::sql_query(format!("CREATE DATABASE {}", quote_ident(&template)))
            .execute(&mut conn)
            .await?;
        db::migrate(&db::with_database(server, &template)?, (schema.migrations)()).await?;
        diesel::sql_query(format!("ALTER DATABASE {} IS_TEMPLATE true", quote_ident(&template)))
            .execute(&mut conn)
            .await?;
        anyhow::Ok(())
    }
    .await;
    let _: i64 = diesel::dsl::select(diesel::dsl::sql::<BigInt>(&format!(
        "pg_advisory_unlock({lock_key})::int8"
    )))
    .get_result(&mut conn)
    .await
    .unwrap_or(0);
    result.with_context(|| format!("preparing the {template} template"))?;
    Ok(template)
}

/// A hash of every file under `dir` (names and contents).
fn fingerprint(dir: &Path) -> anyhow::Result<u64> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut hasher = DefaultHasher::new();
    for file in files {
        file.strip_prefix(dir).unwrap_or(&file).hash(&mut hasher);
        std::fs::read(&file)?.hash(&mut hasher);
    }
    Ok(hasher.finish())
}
