//! How long a consumer remembers the events it applied, and the age past
//! which it refuses an event instead.
//!
//! A consumer's `processed_events` row is what turns a redelivery into a
//! duplicate, so deleting rows must never let a redelivery apply twice. Rows
//! are deleted once `processed_at` is older than the retention `R`
//! (`KEEL_PROCESSED_EVENTS_RETENTION_SECS`); and the sink refuses any event
//! whose `create_time` is older than the horizon `R` less
//! [`CLOCK_SKEW_MARGIN`] (FAILED_PRECONDITION `EVENT_TOO_OLD`, see
//! [`crate::events::delivery`]). An event is applied after it is created, so
//! its row's `processed_at` is at least its `create_time` (up to the skew
//! between the clocks involved, which the margin covers): every event young
//! enough to be accepted still has its row, and dedup stays exact however
//! late a redelivery comes. The relay retries an undelivered event without
//! end, so there is no redelivery horizon to outwait; an event that reaches
//! the horizon undelivered stays in its producer's outbox, its last error
//! saying why, and holds the relay's oldest-age metric up until someone
//! looks, rather than risking a second effect.

use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use diesel::sql_types::{BigInt, Timestamptz};
use diesel_async::RunQueryDsl as _;
use tokio_util::sync::CancellationToken;

use crate::db::Pool;

/// How far apart the clocks of a producer, a consumer and the consumer's
/// database may be: an event is refused this long before its row could go.
pub const CLOCK_SKEW_MARGIN: Duration = Duration::from_secs(3600);

/// How long `processed_events` rows are kept unless configured: far past
/// any outage a relay is expected to ride out.
pub const DEFAULT_PROCESSED_EVENTS_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Rows deleted per statement, so a large backlog never becomes one long
/// delete holding locks and bloating one transaction.
pub const PRUNE_BATCH: i64 = 5_000;

/// How often old rows are deleted, at most (a shorter retention prunes as
/// often as it lasts).
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// The oldest an event may be and still be accepted by a consumer that keeps
/// its `processed_events` rows for `retention`.
pub fn event_horizon(retention: Duration) -> Duration {
    retention.saturating_sub(CLOCK_SKEW_MARGIN)
}

/// Deletes the `processed_events` rows older than `retention`, `batch` rows
/// per statement, until none is left. Returns how many went.
pub async fn prune(pool: &Pool, retention: Duration, batch: i64) -> anyhow::Result<usize> {
    let retention = chrono::Duration::from_std(retention).context("the processed events retention is too large")?;
    let cutoff = Utc::now() - retention;
    let batch = batch.max(1);
    let mut deleted = 0;
    loop {
        let mut conn = pool.get().await.context("taking a connection")?;
        // Written out: diesel's DELETE takes no subquery with a LIMIT.
        let gone = diesel::sql_query(
            "DELETE FROM processed_events WHERE event_id IN \
             (SELECT event_id FROM processed_events WHERE processed_at < $1 LIMIT $2)",
        )
        .bind::<Timestamptz, _>(cutoff)
        .bind::<BigInt, _>(batch)
        .execute(&mut conn)
        .await
        .context("deleting old processed events")?;
        deleted += gone;
        if i64::try_from(gone).unwrap_or(i64::MAX) < batch {
            return Ok(deleted);
        }
    }
}

/// Prunes `processed_events` at once and then every minute (or every
/// `retention`, when shorter) until `shutdown`.
pub async fn run(pool: Pool, retention: Duration, shutdown: CancellationToken) {
    let every = retention.clamp(Duration::from_secs(1), PRUNE_INTERVAL);
    loop {
        tokio::select! {
            pruned = prune(&pool, retention, PRUNE_BATCH) => match pruned {
                Ok(0) => {}
                Ok(deleted) => tracing::debug!(deleted, "deleted old processed events"),
                Err(err) => tracing::warn!(error = format!("{err:#}"), "deleting old processed events failed"),
            },
            () = shutdown.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_horizon_is_the_retention_less_the_clock_skew_margin() {
        assert_eq!(
            event_horizon(DEFAULT_PROCESSED_EVENTS_RETENTION),
            DEFAULT_PROCESSED_EVENTS_RETENTION - CLOCK_SKEW_MARGIN
        );
        assert_eq!(event_horizon(Duration::from_secs(60)), Duration::ZERO);
    }
}
