//! `keel bench ...`: load generators that measure the code on this machine.
//! Figures are only comparable within one run: each bench measures its
//! baseline and the service back to back and prints the ratio.
//!
//! Each bench has its module; `harness` runs the load and computes the
//! figures, `suite` starts the services and pgbench the benches compare,
//! and `cpu` reads the CPU time each party spent per request.

mod accounts;
mod cpu;
mod gateway;
mod harness;
mod login;
mod orders;
mod suite;

use std::time::Duration;

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
