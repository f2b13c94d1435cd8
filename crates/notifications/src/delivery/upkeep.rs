//! Beside the lanes: finished deliveries pruned, and the gauges measured
//! (dead letters waiting, the age of each channel's oldest due delivery),
//! in a task of their own so that busy lanes never delay them.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use keel_platform::Error;
use tokio_util::sync::CancellationToken;

use super::Workers;
use crate::{
    domain::Channel,
    store::{dead_letters, deliveries},
};

/// How often the gauges are measured.
const MEASURE_EVERY: Duration = Duration::from_secs(5);

/// Prunes at start and then at most every minute, and measures every
/// [`MEASURE_EVERY`], until `halt`.
pub(super) async fn run(workers: Arc<Workers>, halt: CancellationToken) {
    let prune_every = workers.config.retention().min(Duration::from_secs(60));
    let mut pruned_at: Option<tokio::time::Instant> = None;
    while !halt.is_cancelled() {
        if pruned_at.is_none_or(|at| at.elapsed() >= prune_every) {
            pruned_at = Some(tokio::time::Instant::now());
            if let Err(err) = prune(&workers).await {
                tracing::warn!(error = %err, "pruning finished deliveries failed");
            }
        }
        if let Err(err) = measure(&workers).await {
            tracing::warn!(error = %err, "measuring the delivery queues failed");
        }
        tokio::select! {
            () = tokio::time::sleep(MEASURE_EVERY) => {}
            () = halt.cancelled() => {}
        }
    }
}

/// Deletes the deliveries that finished longer ago than the retention.
async fn prune(workers: &Workers) -> Result<(), Error> {
    let mut conn = workers.pool.get().await?;
    let deleted = deliveries::prune(&mut conn, workers.config.retention()).await?;
    if deleted > 0 {
        tracing::debug!(deleted, "finished deliveries pruned");
    }
    Ok(())
}

/// Publishes how many dead letters wait for an operator, and how long the
/// oldest due delivery of each channel has waited for a worker.
async fn measure(workers: &Workers) -> Result<(), Error> {
    let mut conn = workers.pool.get().await?;
    workers.metrics.dead_letters(dead_letters::waiting(&mut conn).await?);
    let oldest = deliveries::oldest_due(&mut conn).await?;
    let now = Utc::now();
    for channel in [Channel::Email, Channel::Webhook] {
        let waited = oldest
            .iter()
            .find(|(of, _)| *of == channel)
            .and_then(|(_, due)| *due)
            .and_then(|due| (now - due).to_std().ok())
            .unwrap_or_default();
        workers.metrics.oldest_due(channel, waited);
    }
    Ok(())
}
