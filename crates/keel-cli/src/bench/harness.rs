//! The load harness the benches share: one loop per client hammering a call
//! for a phase, counting what succeeded and failed, and the statistics
//! (median, percentiles) their summaries print.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// The median of `values` (which it sorts).
pub(super) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Milliseconds, for printing.
pub(super) fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Calls per second: one loop per client, each awaiting `call` on its own
/// copy of the client until `phase` is over. Any error ends the bench.
pub(super) async fn throughput<C, F, Fut>(clients: &[C], phase: Duration, call: F) -> anyhow::Result<Tally>
where
    C: Clone + Send + 'static,
    F: Fn(C) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    tally(clients, phase, move |client| {
        let call = call.clone();
        async move { call(client).await.map(Ok) }
    })
    .await
}

/// What one phase did: successful calls per second, and the calls that failed.
pub(super) struct Tally {
    pub(super) per_second: f64,
    /// Every call made, the failed ones and those still in flight when the
    /// phase ended included: what its CPU time is divided by.
    pub(super) calls: u64,
    pub(super) failed: u64,
    /// Why the first failed call failed.
    pub(super) first_failure: Option<String>,
}

/// As [`throughput`], but a call may fail (`Ok(Err(why))`) without ending the
/// bench: it is counted apart and does not count as done.
pub(super) async fn tally<C, F, Fut>(clients: &[C], phase: Duration, call: F) -> anyhow::Result<Tally>
where
    C: Clone + Send + 'static,
    F: Fn(C) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<Result<(), String>>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_failure = Arc::new(OnceLock::new());
    let started = Instant::now();
    let loops: Vec<_> = clients
        .iter()
        .cloned()
        .map(|client| {
            let (stop, done, call) = (stop.clone(), done.clone(), call.clone());
            let (failed, first_failure) = (failed.clone(), first_failure.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match call(client.clone()).await? {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(why) => {
                            let _ = first_failure.set(why);
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                anyhow::Ok(())
            })
        })
        .collect();
    tokio::time::sleep(phase).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for task in loops {
        task.await??;
    }
    let (done, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    Ok(Tally {
        per_second: done as f64 / elapsed.as_secs_f64(),
        calls: done + failed,
        failed,
        first_failure: first_failure.get().cloned(),
    })
}

/// The `p` quantile (0 to 1) of `sorted` latencies in milliseconds, by
/// nearest rank. No samples (a zero-length phase) reads as NaN rather than
/// a panic.
pub(super) fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 * p).ceil() as usize).max(1) - 1;
    sorted.get(index).map_or(f64::NAN, |&latency| ms(latency))
}
