//! The Postgres pool (diesel-async over deadpool), embedded migrations,
//! pagination, and secret `bytea` columns.

pub mod paging;
mod secret_bytes;

pub use secret_bytes::SecretBytes;

use std::time::Duration;

use anyhow::Context as _;
use diesel::{ConnectionError, ConnectionResult};
use diesel_async::{
    AsyncConnection as _, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl as _,
    pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod, deadpool},
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness as _, embed_migrations};
use futures::FutureExt as _;

use prometheus_client::metrics::counter::Counter;

use crate::{
    config::PoolConfig,
    serve::metrics::{Metrics, sampled::SampledGauge},
};

/// A pool of Postgres connections that counts the waits for a connection
/// that timed out. Clones share the pool.
#[derive(Clone)]
pub struct Pool {
    inner: deadpool::Pool<AsyncPgConnection>,
    timeouts: Counter,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("status", &self.inner.status())
            .finish_non_exhaustive()
    }
}

/// Reads one figure of the pool's status.
type PoolReading = fn(&::deadpool::Status) -> usize;

/// A connection taken from the pool.
pub type Connection = deadpool::Object<AsyncPgConnection>;

impl Pool {
    /// A connection, waiting at most the pool's wait timeout for one (and
    /// its create timeout for a new one).
    pub async fn get(&self) -> Result<Connection, deadpool::PoolError> {
        let connection = self.inner.get().await;
        if matches!(connection, Err(deadpool::PoolError::Timeout(_))) {
            self.timeouts.inc();
        }
        connection
    }

    /// Publishes the pool's size, use, waiters and timeouts on `metrics`.
    pub fn register_metrics(&self, metrics: &Metrics) {
        let gauges: [(&'static str, &'static str, PoolReading); 4] = [
            (
                "db_pool_max_connections",
                "The most connections the pool may open.",
                |s| s.max_size,
            ),
            ("db_pool_connections", "Connections the pool holds open.", |s| s.size),
            (
                "db_pool_connections_in_use",
                "Connections taken from the pool now.",
                |s| s.size.saturating_sub(s.available),
            ),
            ("db_pool_waiting", "Callers waiting for a connection.", |s| s.waiting),
        ];
        for (name, help, read) in gauges {
            let pool = self.inner.clone();
            metrics.register_collector(SampledGauge::new(name, help, move || {
                i64::try_from(read(&pool.status())).unwrap_or(i64::MAX)
            }));
        }
        metrics.register(
            "db_pool_timeouts",
            "Requests for a connection that ran out of time, waiting for one or opening it (the caller got UNAVAILABLE).",
            self.timeouts.clone(),
        );
    }
}

/// Builds the pool. Every connection gets a statement timeout, so a runaway
/// query fails instead of holding a connection forever.
pub fn pool(url: &str, config: &PoolConfig) -> anyhow::Result<Pool> {
    let statement_timeout = config.db_statement_timeout_ms;
    let mut manager_config = ManagerConfig::default();
    // Trust a pooled connection unless it reported itself broken: a test
    // query on every checkout would double the round trips of short calls.
    manager_config.recycling_method = RecyclingMethod::Fast;
    manager_config.custom_setup = Box::new(move |url| {
        async move {
            let mut conn = AsyncPgConnection::establish(url).await?;
            diesel::sql_query(format!("SET statement_timeout = {statement_timeout}"))
                .execute(&mut conn)
                .await
                .map_err(ConnectionError::CouldntSetupConfiguration)?;
            ConnectionResult::Ok(conn)
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, manager_config);
    let inner = deadpool::Pool::builder(manager)
        .max_size(config.db_pool_size)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(::deadpool::Runtime::Tokio1)
        .build()
        .context("building the database pool")?;
    Ok(Pool {
        inner,
        timeouts: Counter::default(),
    })
}

/// The tables every service's database has (the outbox, processed events),
/// defined once; [`migrate`] applies them before a service's own.
pub const SHARED_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The folder [`SHARED_MIGRATIONS`] come from (tests fingerprint it).
pub const SHARED_MIGRATIONS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");

/// Runs the pending shared migrations, then the service's `migrations`.
/// Needs the multi-threaded runtime: the harness blocks in place while it
/// works.
pub async fn migrate(url: &str, migrations: EmbeddedMigrations) -> anyhow::Result<()> {
    let conn = AsyncPgConnection::establish(url)
        .await
        .with_context(|| format!("connecting to {} to migrate", redact(url)))?;
    let mut harness = AsyncMigrationHarness::new(conn);
    tokio::task::block_in_place(|| {
        harness.run_pending_migrations(SHARED_MIGRATIONS)?;
        harness.run_pending_migrations(migrations).map(|_| ())
    })
    .map_err(|err| anyhow::anyhow!("running migrations on {}: {err}", redact(url)))
}

/// Creates `database` on the server of `url` unless it exists.
pub async fn ensure_database(url: &str, database: &str) -> anyhow::Result<()> {
    let admin_url = with_database(url, "postgres")?;
    let mut conn = AsyncPgConnection::establish(&admin_url)
        .await
        .with_context(|| format!("connecting to {}", redact(&admin_url)))?;
    let exists: i64 = diesel::dsl::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
        "count(*) FROM pg_database WHERE datname = {}",
        quote_literal(database)
    )))
    .get_result(&mut conn)
    .await?;
    if exists == 0 {
        let created = diesel::sql_query(format!("CREATE DATABASE {}", quote_ident(database)))
            .execute(&mut conn)
            .await;
        // Another process may have created it between the check and here.
        if let Err(err) = created
            && !err.to_string().contains("already exists")
        {
            return Err(err).with_context(|| format!("creating database {database}"));
        }
    }
    Ok(())
}

/// Drops `database` on the server of `url` if it exists, ending its sessions.
pub async fn drop_database(url: &str, database: &str) -> anyhow::Result<()> {
    let admin_url = with_database(url, "postgres")?;
    let mut conn = AsyncPgConnection::establish(&admin_url)
        .await
        .with_context(|| format!("connecting to {}", redact(&admin_url)))?;
    diesel::sql_query(format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_ident(database)
    ))
    .execute(&mut conn)
    .await
    .with_context(|| format!("dropping database {database}"))?;
    Ok(())
}

/// `url` with its path replaced by `database`.
pub fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").context("a database URL starts with postgres://")? + 3;
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{}", &base[..host_end], database);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

/// `url` with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    match (rest.find('@'), rest.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!("{}{}:***{}", &url[..scheme_end], &rest[..colon], &rest[at..])
        }
        _ => url.to_owned(),
    }
}

/// Quotes an SQL identifier.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

diesel::define_sql_function! {
    /// Postgres `pg_notify(channel, payload)`: delivered when the transaction commits.
    fn pg_notify(channel: diesel::sql_types::Text, payload: diesel::sql_types::Text);
}

/// Sends NOTIFY `channel` with `payload` when the caller's transaction
/// commits (at once outside one).
pub async fn notify(conn: &mut AsyncPgConnection, channel: &str, payload: &str) -> diesel::QueryResult<()> {
    diesel::select(pg_notify(channel, payload)).execute(conn).await?;
    Ok(())
}

/// Wakes `wake` on every NOTIFY of `channel` in the database at `url` until
/// `shutdown`, reconnecting after errors. Each (re)connection wakes it once
/// too: what was committed before LISTEN took effect is found by that pass.
pub async fn listen(
    url: String,
    channel: &'static str,
    wake: std::sync::Arc<tokio::sync::Notify>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    listen_with(url, channel, move |_| wake.notify_one(), shutdown).await;
}

/// Calls `on_notify` with each NOTIFY's payload on `channel` in the database
/// at `url` until `shutdown`, reconnecting after errors; after each
/// (re)connection it is called with `None`, since notifications sent while
/// no connection listened are lost and whoever relies on them must look.
pub async fn listen_with(
    url: String,
    channel: &'static str,
    on_notify: impl Fn(Option<&str>) + Send + Sync,
    shutdown: tokio_util::sync::CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let listening = listen_once(&url, channel, &on_notify);
        let lost = tokio::select! {
            lost = listening => lost,
            () = shutdown.cancelled() => return,
        };
        if let Err(err) = lost {
            tracing::debug!(error = format!("{err:#}"), channel, "a LISTEN connection was lost");
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn listen_once(url: &str, channel: &str, on_notify: &(impl Fn(Option<&str>) + Sync)) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let mut conn = AsyncPgConnection::establish(url).await?;
    diesel::sql_query(format!("LISTEN {}", quote_ident(channel)))
        .execute(&mut conn)
        .await?;
    on_notify(None);
    let mut notifications = std::pin::pin!(conn.notifications_stream());
    while let Some(notification) = notifications.next().await {
        on_notify(Some(&notification?.payload));
    }
    Ok(())
}

/// `ToSql`/`FromSql` for a Rust enum stored as a Postgres enum of the same
/// labels (the enum gives `ALL` and `as_str`, and derives `AsExpression` and
/// `FromSqlRow` for `$sql`); an unknown label is an error, never a default.
#[macro_export]
macro_rules! pg_enum {
    ($rust:ty, $sql:ty, $what:literal) => {
        impl ::diesel::serialize::ToSql<$sql, ::diesel::pg::Pg> for $rust {
            fn to_sql<'b>(
                &'b self,
                out: &mut ::diesel::serialize::Output<'b, '_, ::diesel::pg::Pg>,
            ) -> ::diesel::serialize::Result {
                ::std::io::Write::write_all(out, self.as_str().as_bytes())?;
                Ok(::diesel::serialize::IsNull::No)
            }
        }

        impl ::diesel::deserialize::FromSql<$sql, ::diesel::pg::Pg> for $rust {
            fn from_sql(value: ::diesel::pg::PgValue<'_>) -> ::diesel::deserialize::Result<Self> {
                let label = value.as_bytes();
                <$rust>::ALL
                    .into_iter()
                    .find(|known| known.as_str().as_bytes() == label)
                    .ok_or_else(|| format!("unknown {} {:?}", $what, String::from_utf8_lossy(label)).into())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_and_keeps_the_query() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/a?sslmode=disable", "b")
                .ok()
                .as_deref(),
            Some("postgres://u:p@h:5432/b?sslmode=disable")
        );
        assert_eq!(
            with_database("postgres://h:5432", "b").ok().as_deref(),
            Some("postgres://h:5432/b")
        );
    }

    #[test]
    fn hides_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
