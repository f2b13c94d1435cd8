//! `keel bench ...`: load generators that measure the code on this machine.
//! Figures are only comparable within one run: each bench measures its
//! baseline and the service back to back and prints the ratio.

mod accounts;
mod login;

use std::time::Duration;

use clap::Subcommand;

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Login throughput against the raw argon2id verify rate with the same
    /// parameters, and GetJwks latency while Login is saturated.
    Login(login::LoginBench),
    /// GetBalance against `pgbench -S` and Debit against pgbench's tpcb-like
    /// transaction, at the same concurrency on the same Postgres.
    Accounts(accounts::AccountsBench),
}

impl BenchCommand {
    /// Runs the bench.
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            BenchCommand::Login(bench) => bench.run().await,
            BenchCommand::Accounts(bench) => bench.run().await,
        }
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
