//! `keel migrate <service>`: one service's database, with its own URL, as a
//! per-database migration Job runs it; an unknown service is refused.

use std::process::Command;

use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

async fn tables(url: &str, names: &[&str]) -> anyhow::Result<i64> {
    let mut conn = AsyncPgConnection::establish(url).await?;
    let list = names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ");
    let found: Count = diesel::sql_query(format!(
        "SELECT count(*) AS count FROM information_schema.tables WHERE table_schema = 'public' AND table_name IN ({list})"
    ))
    .get_result(&mut conn)
    .await?;
    Ok(found.count)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_service_is_migrated_on_its_own_database() -> anyhow::Result<()> {
    let server = keel_testkit::server_url()?;
    let name = format!("test_migrate_{}", uuid::Uuid::now_v7().simple());
    keel_platform::db::ensure_database(&server, &name).await?;
    let url = keel_platform::db::with_database(&server, &name)?;

    // Twice: the second run finds nothing pending.
    for _ in 0..2 {
        let out = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["migrate", "auth"])
            .env("KEEL_AUTH_DATABASE_URL", &url)
            .env_remove("KEEL_DATABASE_URL")
            .output()?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // Auth's own tables and the shared outbox, nothing of another service's.
    assert_eq!(tables(&url, &["users", "sessions", "outbox"]).await?, 3);
    assert_eq!(tables(&url, &["accounts", "orders"]).await?, 0);

    let unknown = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["migrate", "billing"])
        .output()?;
    assert!(!unknown.status.success());
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        said.contains("the services are auth, accounts, orders, notifications"),
        "{said}"
    );

    keel_platform::db::drop_database(&server, &name).await
}
