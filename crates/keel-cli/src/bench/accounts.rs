//! `keel bench accounts`: the ledger's reads and writes against what the same
//! Postgres does on its own (pgbench), at the same concurrency.

use std::time::Duration;

use clap::Args;
use keel::accounts::v1::{DebitRequest, GetBalanceRequest};

use super::{
    Phases,
    cpu::{Medians, PerRequest},
    harness::{self, median},
    suite::{Client, Pgbench, PgbenchRun, Services, against_pgbench, bearer, drop_scratch_databases, usd},
};
use crate::database::{Database, DatabaseArgs};

/// `keel bench accounts`.
#[derive(Debug, Args)]
pub struct AccountsBench {
    #[command(flatten)]
    phases: Phases,

    #[command(flatten)]
    database: DatabaseArgs,
}

impl AccountsBench {
    /// Runs the bench.
    pub async fn run(self) -> anyhow::Result<()> {
        let database = self.database.open().await?;
        let result = self.run_on(&database).await;
        drop_scratch_databases(&database).await;
        database.close();
        result
    }

    async fn run_on(&self, database: &Database) -> anyhow::Result<()> {
        against_pgbench(database, "accounts", &self.phases, async |suite, pgbench| {
            self.measure(suite, pgbench).await
        })
        .await
    }

    async fn measure(&self, suite: &Services, pgbench: &Pgbench) -> anyhow::Result<()> {
        let clients = suite.clients(self.phases.concurrency).await?;
        let phase = self.phases.phase();
        let (mut reads, mut writes) = (Comparison::default(), Comparison::default());
        for round in self.phases.rounds() {
            reads.baseline(round, "pgbench -S", pgbench.run(&["-S"], self.phases.seconds)?);
            let (balances, cpu) = throughput(suite, &clients, phase, Op::GetBalance).await?;
            reads.keel(round, "GetBalance", balances, &cpu);
            writes.baseline(round, "pgbench tpcb-like", pgbench.run(&[], self.phases.seconds)?);
            let (debits, cpu) = throughput(suite, &clients, phase, Op::Debit).await?;
            writes.keel(round, "Debit", debits, &cpu);
        }
        reads.summary("GetBalance (authenticated, over gRPC) / pgbench -S");
        writes.summary("Debit (idempotent ledger entry + outbox event) / pgbench tpcb-like");
        let (checked, mismatches) = keel_accounts::verify_ledger(&suite.accounts_url).await?;
        println!(
            "ledger check after the run: {checked} accounts, {} differences",
            mismatches.len()
        );
        Ok(())
    }
}

/// One Keel call against one pgbench mode, round after round.
#[derive(Default)]
struct Comparison {
    /// The tps of the round's pgbench phase, which runs first.
    baseline_tps: f64,
    ratios: Vec<f64>,
    keel: Medians,
    pgbench: Medians,
}

impl Comparison {
    /// Prints the round's pgbench phase and keeps its figures.
    fn baseline(&mut self, round: usize, mode: &str, run: PgbenchRun) {
        println!("  round {round}: {mode} {:.0} tps; {}", run.tps, run.cpu);
        self.baseline_tps = run.tps;
        self.pgbench.push_transaction(&run.cpu);
    }

    /// Prints the round's Keel phase, with its ratio to the pgbench phase
    /// before it, and keeps its figures.
    fn keel(&mut self, round: usize, call: &str, rate: f64, cpu: &PerRequest) {
        let ratio = rate / self.baseline_tps;
        println!("  round {round}: {call} {rate:.0}/s -> {ratio:.2}; {cpu}");
        self.ratios.push(ratio);
        self.keel.push_request(cpu);
    }

    fn summary(&mut self, what: &str) {
        println!(
            "{what}: median {:.2} (target >= 0.50); median CPU: {} vs pgbench's {}",
            median(&mut self.ratios),
            self.keel.requests(),
            self.pgbench.transactions()
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    GetBalance,
    Debit,
}

/// Calls per second of `op`, one loop per client, for `phase`, and the CPU
/// time per call.
async fn throughput(
    suite: &Services,
    clients: &[Client],
    phase: Duration,
    op: Op,
) -> anyhow::Result<(f64, PerRequest)> {
    let call = move |mut client: Client| async move {
        match op {
            Op::GetBalance => {
                let request = GetBalanceRequest {
                    account_id: client.account_id.clone(),
                };
                client
                    .accounts
                    .get_balance(bearer(request, &client.user_token)?)
                    .await?;
            }
            Op::Debit => {
                let request = DebitRequest {
                    account_id: client.account_id.clone(),
                    amount: Some(usd(1)),
                    request_id: format!("bench-{}", uuid::Uuid::now_v7()),
                    ..Default::default()
                };
                client.accounts.debit(bearer(request, &client.service_token)?).await?;
            }
        }
        Ok(())
    };
    let label = match op {
        Op::GetBalance => "GetBalance",
        Op::Debit => "Debit",
    };
    let (tally, cpu) = suite
        .meter
        .measure(label, harness::throughput(clients, phase, call))
        .await;
    let tally = tally?;
    Ok((tally.per_second, cpu.per_request(tally.calls)))
}
