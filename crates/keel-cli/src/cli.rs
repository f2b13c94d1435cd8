//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use keel_accounts::AccountsConfig;
use keel_auth::AuthConfig;
use keel_gateway::GatewayConfig;
use keel_platform::config::TelemetryConfig;

use crate::{admin, bench, database::DatabaseArgs, serve, up};

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
    /// Create every service's database if missing and apply its migrations.
    Migrate(DatabaseArgs),
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

/// `keel up`. Each service reads the rest of its settings from the
/// environment, as `keel serve <service> --help` lists them.
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Where auth listens.
    #[arg(long, env = "KEEL_AUTH_LISTEN", default_value = "127.0.0.1:50051")]
    pub auth_listen: std::net::SocketAddr,

    /// Where accounts listens.
    #[arg(long, env = "KEEL_ACCOUNTS_LISTEN", default_value = "127.0.0.1:50052")]
    pub accounts_listen: std::net::SocketAddr,

    /// Where the REST/JSON gateway listens.
    #[arg(long, env = "KEEL_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub gateway_listen: std::net::SocketAddr,
}

#[derive(Debug, Subcommand)]
enum ServeCommand {
    /// The auth service.
    Auth(AuthServeArgs),
    /// The accounts service.
    Accounts(AccountsServeArgs),
    /// The REST/JSON gateway in front of the services.
    Gateway(GatewayConfig),
}

/// `keel serve accounts`.
#[derive(Debug, Args)]
pub struct AccountsServeArgs {
    /// The Postgres server; accounts uses its `keel_accounts` database (or
    /// set KEEL_ACCOUNTS_DATABASE_URL).
    #[arg(long, env = "KEEL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    #[command(flatten)]
    pub accounts: AccountsConfig,
}

/// `keel serve auth`.
#[derive(Debug, Args)]
pub struct AuthServeArgs {
    /// The Postgres server; auth uses its `keel_auth` database (or set
    /// KEEL_AUTH_DATABASE_URL).
    #[arg(long, env = "KEEL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    #[command(flatten)]
    pub auth: AuthConfig,
}

impl Cli {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Up(args) => {
                let _telemetry = keel_platform::telemetry::init("keel", &self.telemetry)?;
                up::run(args).await
            }
            Command::Serve {
                service: ServeCommand::Auth(args),
            } => {
                let _telemetry = keel_platform::telemetry::init("keel-auth", &self.telemetry)?;
                serve::auth(args).await
            }
            Command::Serve {
                service: ServeCommand::Accounts(args),
            } => {
                let _telemetry = keel_platform::telemetry::init("keel-accounts", &self.telemetry)?;
                serve::accounts(args).await
            }
            Command::Serve {
                service: ServeCommand::Gateway(config),
            } => {
                let _telemetry = keel_platform::telemetry::init("keel-gateway", &self.telemetry)?;
                serve::gateway(config).await
            }
            Command::Migrate(args) => {
                let _telemetry = keel_platform::telemetry::init("keel", &self.telemetry)?;
                let database = args.open().await?;
                let result = database.prepare_all().await;
                database.close();
                result
            }
            Command::Admin { command } => command.run().await,
            Command::Bench { command } => command.run().await,
        }
    }
}

/// The default folder for the private cluster's data.
pub fn default_data_dir() -> PathBuf {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0);
    std::env::temp_dir().join(format!("keel-{uid}"))
}
