//! The command line.

use clap::{Parser, Subcommand};
use keel_platform::config::TelemetryConfig;

use crate::{admin, bench, database::MigrateArgs, serve::ServeCommand, up::UpArgs};

/// Keel: sign-in, accounts, orders and notifications as gRPC services.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,

    #[command(flatten)]
    telemetry: TelemetryConfig,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole suite on this machine, with a private Postgres unless
    /// KEEL_DATABASE_URL is set. Ctrl-C stops everything.
    Up(UpArgs),
    /// Run one service in this process (the container mode).
    Serve {
        #[command(subcommand)]
        service: ServeCommand,
    },
    /// Create every service's database if missing and apply its migrations;
    /// or only one service's (`keel migrate auth`).
    Migrate(MigrateArgs),
    /// Administrative tasks.
    Admin {
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
    /// Load generators that measure the running code on this machine.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

impl Cli {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Up(args) => {
                let _telemetry = keel_platform::serve::telemetry::init("keel", &self.telemetry)?;
                crate::up::run(args).await
            }
            Command::Serve { service } => {
                let name = format!("keel-{}", service.name());
                let _telemetry = keel_platform::serve::telemetry::init(&name, &self.telemetry)?;
                service.run().await
            }
            Command::Migrate(args) => {
                let _telemetry = keel_platform::serve::telemetry::init("keel", &self.telemetry)?;
                args.run().await
            }
            Command::Admin { command } => command.run().await,
            // The services a bench starts trace and format their logs as
            // they do in production, so the cost is in the figures; the
            // lines are dropped, as the bench's own output is its figures.
            Command::Bench { command } => {
                let discard = keel_platform::serve::telemetry::BoxMakeWriter::new(std::io::sink);
                let _telemetry =
                    keel_platform::serve::telemetry::init_with_writer("keel", &self.telemetry, discard, false)?;
                command.run().await
            }
        }
    }
}
