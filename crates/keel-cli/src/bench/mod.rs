//! `keel bench ...`: load generators that measure the code on this machine.
//! Figures are only comparable within one run: each bench measures its
//! baseline and the service back to back and prints the ratio.

mod accounts;
mod gateway;
mod login;
mod orders;

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::{Args, Subcommand};

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Login throughput against the raw argon2id verify rate with the same
    /// parameters, and GetJwks latency while Login is saturated.
    Login(login::LoginBench),
    /// GetBalance against `pgbench -S` and Debit against pgbench's tpcb-like
    /// transaction, at the same concurrency on the same Postgres.
    Accounts(accounts::AccountsBench),
    /// GET /v1/accounts/me through the gateway against GetAccount made
    /// directly over gRPC, at the same concurrency.
    Gateway(gateway::GatewayBench),
    /// CreateOrder paid from the balance (orders, accounts, both outboxes)
    /// against pgbench's tpcb-like transaction, at the same concurrency on the
    /// same Postgres.
    Orders(orders::OrdersBench),
}

impl BenchCommand {
    /// Runs the bench.
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            BenchCommand::Login(bench) => bench.run().await,
            BenchCommand::Accounts(bench) => bench.run().await,
            BenchCommand::Gateway(bench) => bench.run().await,
            BenchCommand::Orders(bench) => bench.run().await,
        }
    }
}

/// How long and how hard a comparison bench runs.
#[derive(Debug, Clone, Args)]
pub struct Phases {
    /// How long each phase runs (seconds).
    #[arg(long, default_value_t = 4)]
    seconds: u64,

    /// Rounds; each measures the baseline and Keel back to back, and the
    /// summary takes the median ratio.
    #[arg(long, default_value_t = 3)]
    rounds: usize,

    /// Concurrent clients, for the baseline and Keel alike.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

impl Phases {
    /// One phase's length.
    fn phase(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }

    /// The rounds to run (at least one).
    fn rounds(&self) -> std::ops::RangeInclusive<usize> {
        1..=self.rounds.max(1)
    }
}

/// The median of `values` (which it sorts).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Milliseconds, for printing.
fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Calls per second: one loop per client, each awaiting `call` on its own
/// copy of the client until `phase` is over. Any error ends the bench.
async fn throughput<C, F, Fut>(clients: &[C], phase: Duration, call: F) -> anyhow::Result<f64>
where
    C: Clone + Send + 'static,
    F: Fn(C) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let tally = tally(clients, phase, move |client| {
        let call = call.clone();
        async move { call(client).await.map(Ok) }
    })
    .await?;
    Ok(tally.per_second)
}

/// What one phase did: successful calls per second, and the calls that failed.
struct Tally {
    per_second: f64,
    failed: u64,
    /// Why the first failed call failed.
    first_failure: Option<String>,
}

/// As [`throughput`], but a call may fail (`Ok(Err(why))`) without ending the
/// bench: it is counted apart and does not count as done.
async fn tally<C, F, Fut>(clients: &[C], phase: Duration, call: F) -> anyhow::Result<Tally>
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
    Ok(Tally {
        per_second: done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        failed: failed.load(Ordering::Relaxed),
        first_failure: first_failure.get().cloned(),
    })
}

/// Retries `call` for up to 30 s: the services may still be starting.
async fn retry<T, F, Fut>(mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() < deadline => {
                tracing::debug!(error = format!("{err:#}"), "waiting for the services");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err),
        }
    }
}
