//! Pruning `processed_events` on a real database: rows past the retention
//! go, a batch per statement, and younger ones stay.

use std::time::Duration;

use diesel::QueryDsl as _;
use diesel_async::RunQueryDsl as _;
use keel_platform::events::{processed_events, retention};
use keel_testkit::{TestDatabase, suite::schema};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn rows_past_the_retention_are_pruned_in_batches_and_younger_ones_kept() -> anyhow::Result<()> {
    let db = TestDatabase::create(schema(&keel_accounts::SERVICE)).await?;
    let pool = keel_platform::db::pool(db.url(), &Default::default())?;
    let retention = Duration::from_secs(3600);
    // Seven past the retention (more than three batches of two), three not.
    let old: Vec<(Uuid, f64)> = (0..7).map(|i| (Uuid::now_v7(), 3_700.0 + f64::from(i))).collect();
    let young = [(Uuid::now_v7(), 3_500.0), (Uuid::now_v7(), 60.0), (Uuid::now_v7(), 0.0)];
    let mut conn = pool.get().await?;
    for (id, age_secs) in old.iter().chain(&young) {
        diesel::sql_query(
            "INSERT INTO processed_events (event_id, processed_at) VALUES ($1, now() - make_interval(secs => $2))",
        )
        .bind::<diesel::sql_types::Uuid, _>(id)
        .bind::<diesel::sql_types::Double, _>(age_secs)
        .execute(&mut conn)
        .await?;
    }

    assert_eq!(retention::prune(&pool, retention, 2).await?, old.len());
    let mut kept: Vec<Uuid> = processed_events::table
        .select(processed_events::event_id)
        .load(&mut conn)
        .await?;
    kept.sort();
    let mut expected: Vec<Uuid> = young.iter().map(|(id, _)| *id).collect();
    expected.sort();
    assert_eq!(kept, expected);
    assert_eq!(retention::prune(&pool, retention, 2).await?, 0, "nothing left to prune");
    Ok(())
}
