//! `keel bench accounts`: the ledger's reads and writes against what the same
//! Postgres does on its own (pgbench), at the same concurrency.

use std::time::Duration;

use clap::Args;
use keel::accounts::v1::{DebitRequest, GetBalanceRequest};

use super::{
    Phases,
    harness::{self, median},
    suite::{Client, Pgbench, Services, against_pgbench, bearer, drop_scratch_databases, usd},
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
        let (mut reads, mut writes) = (Vec::new(), Vec::new());
        for round in self.phases.rounds() {
            let select_only = pgbench.run(&["-S"], self.phases.seconds)?;
            let balances = throughput(&clients, phase, Op::GetBalance).await?;
            let tpcb = pgbench.run(&[], self.phases.seconds)?;
            let debits = throughput(&clients, phase, Op::Debit).await?;
            println!(
                "  round {round}: GetBalance {balances:.0}/s vs pgbench -S {select_only:.0} tps -> {:.2}; \
                 Debit {debits:.0}/s vs pgbench tpcb-like {tpcb:.0} tps -> {:.2}",
                balances / select_only,
                debits / tpcb
            );
            reads.push(balances / select_only);
            writes.push(debits / tpcb);
        }
        println!(
            "GetBalance (authenticated, over gRPC) / pgbench -S: median {:.2} (target >= 0.50)",
            median(&mut reads)
        );
        println!(
            "Debit (idempotent ledger entry + outbox event) / pgbench tpcb-like: median {:.2} (target >= 0.50)",
            median(&mut writes)
        );
        let (checked, mismatches) = keel_accounts::verify_ledger(&suite.accounts_url).await?;
        println!(
            "ledger check after the run: {checked} accounts, {} differences",
            mismatches.len()
        );
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    GetBalance,
    Debit,
}

/// Calls per second of `op`, one loop per client, for `phase`.
async fn throughput(clients: &[Client], phase: Duration, op: Op) -> anyhow::Result<f64> {
    harness::throughput(clients, phase, move |mut client: Client| async move {
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
    })
    .await
}
