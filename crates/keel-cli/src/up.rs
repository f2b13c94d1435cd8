//! `keel up`: the whole suite on this machine.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use keel_accounts::AccountsConfig;
use keel_auth::AuthConfig;
use keel_gateway::GatewayConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{cli::UpArgs, database::Database};

/// Starts Postgres (unless a URL is given), migrates, serves every
/// implemented service, and stops it all on Ctrl-C or SIGTERM.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let database = args.database.open().await?;
    let result = serve_all(&args, &database).await;
    database.close();
    if let Err(err) = &result {
        tracing::error!(error = format!("{err:#}"), "keel up failed");
    } else {
        say("Keel stopped.\n");
    }
    result
}

/// One service of the suite, running.
struct Service {
    name: &'static str,
    /// The gRPC service whose health says it is ready; None for the gateway,
    /// which serves as soon as its socket is bound.
    grpc_name: Option<&'static str>,
    endpoint: String,
    addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

async fn serve_all(args: &UpArgs, database: &Database) -> anyhow::Result<()> {
    database.prepare_all().await?;
    let shutdown = CancellationToken::new();
    let auth_addr = loopback(args.auth_listen);
    let accounts_addr = loopback(args.accounts_listen);
    let gateway_addr = loopback(args.gateway_listen);

    // Each service reads the rest of its settings from the environment.
    let auth_config = AuthConfig::from_args([
        "keel",
        "--auth-listen",
        &args.auth_listen.to_string(),
        "--accounts-url",
        &format!("http://{accounts_addr}"),
        // The gateway calls from loopback and names the client it serves.
        "--trusted-proxies",
        "127.0.0.1",
    ])?;
    let accounts_config = AccountsConfig::from_args([
        "keel",
        "--accounts-listen",
        &args.accounts_listen.to_string(),
        "--auth-url",
        &format!("http://{auth_addr}"),
    ])?;
    let gateway_config = GatewayConfig::from_args([
        "keel",
        "--gateway-listen",
        &args.gateway_listen.to_string(),
        "--auth-url",
        &format!("http://{auth_addr}"),
        "--accounts-url",
        &format!("http://{accounts_addr}"),
    ])?;
    let auth_url = match &auth_config.auth_database_url {
        Some(url) => url.clone(),
        None => database.url(keel_auth::DATABASE)?,
    };
    let accounts_url = match &accounts_config.accounts_database_url {
        Some(url) => url.clone(),
        None => database.url(keel_accounts::DATABASE)?,
    };

    let auth_listener = keel_platform::server::bind(args.auth_listen).await?;
    let accounts_listener = keel_platform::server::bind(args.accounts_listen).await?;
    let gateway_listener = keel_platform::server::bind(args.gateway_listen).await?;
    let mut services = vec![
        Service {
            name: "auth",
            grpc_name: Some(keel_auth::SERVICE_NAME),
            endpoint: format!("grpc://{auth_addr}"),
            addr: auth_addr,
            task: tokio::spawn(keel_auth::run(auth_config, auth_url, auth_listener, shutdown.clone())),
        },
        Service {
            name: "accounts",
            grpc_name: Some(keel_accounts::SERVICE_NAME),
            endpoint: format!("grpc://{accounts_addr}"),
            addr: accounts_addr,
            task: tokio::spawn(keel_accounts::run(
                accounts_config,
                accounts_url,
                accounts_listener,
                shutdown.clone(),
            )),
        },
        Service {
            name: "gateway",
            grpc_name: None,
            endpoint: format!("http://{gateway_addr}"),
            addr: gateway_addr,
            task: tokio::spawn(keel_gateway::run(gateway_config, gateway_listener, shutdown.clone())),
        },
    ];

    let health_checks: Vec<(SocketAddr, &'static str)> = services
        .iter()
        .filter_map(|s| s.grpc_name.map(|name| (s.addr, name)))
        .collect();
    let ready = async {
        for (addr, grpc_name) in health_checks {
            wait_until_serving(addr, grpc_name).await?;
        }
        anyhow::Ok(())
    };
    // A service that fails while the others start is reported at once.
    let outcome = tokio::select! {
        ready = ready => ready.map(|()| true),
        () = keel_platform::server::shutdown_signal() => Ok(false),
        failed = first_exit(&mut services) => {
            shutdown.cancel();
            return Err(failed);
        }
    };
    if matches!(outcome, Ok(true)) {
        print_banner(&services, database);
        tokio::select! {
            () = keel_platform::server::shutdown_signal() => say("\nStopping…\n"),
            failed = first_exit(&mut services) => {
                shutdown.cancel();
                return Err(failed);
            }
        }
    }
    shutdown.cancel();
    for service in services {
        service
            .task
            .await
            .with_context(|| format!("{} panicked", service.name))??;
    }
    outcome.map(|_| ())
}

/// Waits for the first service to stop, which while Keel is up is a failure.
async fn first_exit(services: &mut [Service]) -> anyhow::Error {
    let (exited, index, _) = futures::future::select_all(services.iter_mut().map(|s| &mut s.task)).await;
    let service = services[index].name;
    match exited {
        Ok(Ok(())) => anyhow::anyhow!("{service} stopped unexpectedly"),
        Ok(Err(err)) => err.context(format!("{service} failed")),
        Err(err) => anyhow::anyhow!("{service} panicked: {err}"),
    }
}

async fn wait_until_serving(addr: SocketAddr, service: &str) -> anyhow::Result<()> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?.connect_lazy();
    keel_platform::server::wait_until_serving(channel, service, Duration::from_secs(60)).await
}

/// The address to dial for a listener bound to `addr` (an unspecified
/// address is reached over loopback).
fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

fn print_banner(services: &[Service], database: &Database) {
    use std::fmt::Write as _;
    let postgres = match database.cluster() {
        Some(cluster) => format!(
            "private cluster on 127.0.0.1:{}, data in {}{}",
            cluster.port(),
            cluster.root().join("data").display(),
            if cluster.started_here() {
                " (stops with Keel)"
            } else {
                " (already running; left running)"
            }
        ),
        None => keel_platform::db::redact(&database.url("postgres").unwrap_or_default()),
    };
    let mut text = String::from("\nKeel is up.\n\n");
    let _ = writeln!(text, "  {:<10} {:<28} HEALTH", "SERVICE", "ENDPOINT");
    for service in services {
        let _ = writeln!(text, "  {:<10} {:<28} SERVING", service.name, service.endpoint);
    }
    let auth = services[0].addr;
    let gateway = services.iter().find(|s| s.grpc_name.is_none()).map_or(auth, |s| s.addr);
    let _ = write!(
        text,
        "\nPostgres: {postgres}\n\nTry it:\n  \
         curl http://{gateway}/v1/auth/jwks\n  \
         curl http://{gateway}/openapi.json\n  \
         buf curl --protocol grpc --http2-prior-knowledge http://{auth}/keel.auth.v1.AuthService/GetJwks\n  \
         grpcurl -plaintext -d '{{}}' {auth} keel.auth.v1.AuthService/GetJwks\n\nCtrl-C stops everything.\n"
    );
    say(&text);
}

/// Writes to stdout; a closed stdout (`keel up | head`) must not stop Keel.
fn say(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}
