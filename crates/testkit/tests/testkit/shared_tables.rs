//! The outbox and processed_events tables are defined once, in platform's
//! migrations. A database made before that, whose service's first migration
//! created its own copies, migrates cleanly and keeps working.

use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _, SimpleAsyncConnection as _};
use keel::events::v1::{UserRegistered, event::Payload};
use keel_platform::{db, events::outbox};

/// The copies the services' first migrations used to create.
const OLD_COPIES: &str = "
    CREATE TABLE processed_events (
        event_id uuid PRIMARY KEY,
        processed_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE outbox (
        id uuid PRIMARY KEY,
        event_type text NOT NULL,
        payload bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        published_at timestamptz,
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_at timestamptz NOT NULL DEFAULT now(),
        last_error text
    );
    CREATE INDEX outbox_pending ON outbox (next_attempt_at) WHERE published_at IS NULL;
    CREATE TABLE __diesel_schema_migrations (
        version varchar(50) PRIMARY KEY NOT NULL,
        run_on timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP
    );
    INSERT INTO __diesel_schema_migrations (version) VALUES ('20261124000001');
";

#[tokio::test(flavor = "multi_thread")]
async fn a_database_with_the_old_copies_adopts_the_shared_tables() -> anyhow::Result<()> {
    let server = keel_testkit::server_url()?;
    let name = format!("test_adopt_{}", uuid::Uuid::now_v7().simple());
    db::ensure_database(&server, &name).await?;
    let url = db::with_database(&server, &name)?;
    let result = async {
        // A keel_auth as the old first migration left it: its tables, the
        // copies, and the migration recorded as applied.
        let mut conn = AsyncPgConnection::establish(&url).await?;
        let auth_first = std::fs::read_to_string(format!(
            "{}/2026-11-24-000001_create_auth/up.sql",
            keel_auth::MIGRATIONS_DIR
        ))?;
        conn.batch_execute(&auth_first).await?;
        conn.batch_execute(OLD_COPIES).await?;

        db::migrate(&url, keel_auth::MIGRATIONS).await?;

        // The shared migration is recorded, and the adopted outbox works.
        let shared: i64 = diesel::select(diesel::dsl::sql::<BigInt>(
            "(SELECT count(*) FROM __diesel_schema_migrations WHERE version = '20261120000001')",
        ))
        .get_result(&mut conn)
        .await?;
        assert_eq!(shared, 1);
        outbox::enqueue(&mut conn, "auth", Payload::UserRegistered(UserRegistered::default())).await?;
        let rows: i64 = diesel::select(diesel::dsl::sql::<BigInt>("(SELECT count(*) FROM outbox)"))
            .get_result(&mut conn)
            .await?;
        assert_eq!(rows, 1);
        anyhow::Ok(())
    }
    .await;
    db::drop_database(&server, &name).await?;
    result
}
