//! `keel up`: the whole suite on this machine.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::cli::UpArgs;

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

async fn serve_all(args: &UpArgs, database: &crate::database::Database) -> anyhow::Result<()> {
    database.prepare_all().await?;
    let shutdown = CancellationToken::new();

    let auth_addr = args.auth.listen;
    let auth_listener = keel_platform::server::bind(auth_addr).await?;
    let auth_url = match &args.auth.auth_database_url {
        Some(url) => url.clone(),
        None => database.url(keel_auth::DATABASE)?,
    };
    let mut auth = tokio::spawn(keel_auth::run(
        args.auth.clone(),
        auth_url,
        auth_listener,
        shutdown.clone(),
    ));

    let ready = tokio::select! {
        ready = wait_until_serving(auth_addr, keel_auth::SERVICE_NAME) => ready,
        exited = &mut auth => return Err(exited_early("auth", exited)),
        () = keel_platform::server::shutdown_signal() => {
            shutdown.cancel();
            return auth.await.context("auth panicked")?;
        }
    };
    ready?;
    print_banner(args, database);

    tokio::select! {
        () = keel_platform::server::shutdown_signal() => {
            say("\nStopping…\n");
        }
        exited = &mut auth => return Err(exited_early("auth", exited)),
    }
    shutdown.cancel();
    auth.await.context("auth panicked")?
}

fn exited_early(service: &str, exited: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match exited {
        Ok(Ok(())) => anyhow::anyhow!("{service} stopped unexpectedly"),
        Ok(Err(err)) => err.context(format!("{service} failed")),
        Err(err) => anyhow::anyhow!("{service} panicked: {err}"),
    }
}

async fn wait_until_serving(addr: SocketAddr, service: &str) -> anyhow::Result<()> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", loopback(addr)))?.connect_lazy();
    let mut health = HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|r| r.into_inner().status);
        if matches!(status, Ok(s) if s == ServingStatus::Serving as i32) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{service} did not report SERVING within a minute"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

fn print_banner(args: &UpArgs, database: &crate::database::Database) {
    use std::fmt::Write as _;
    let auth = loopback(args.auth.listen);
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
        None => keel_platform::db::redact(args.database.database_url.as_deref().unwrap_or_default()),
    };
    let mut text = String::new();
    let _ = write!(
        text,
        "\nKeel is up.\n\n  {:<10} {:<28} HEALTH\n  {:<10} {:<28} SERVING\n\nPostgres: {postgres}\n\n\
         Try it:\n  buf curl --protocol grpc --http2-prior-knowledge http://{auth}/keel.auth.v1.AuthService/GetJwks\n  \
         grpcurl -plaintext -d '{{}}' {auth} keel.auth.v1.AuthService/GetJwks\n\nCtrl-C stops everything.\n",
        "SERVICE",
        "ENDPOINT",
        "auth",
        format!("grpc://{auth}"),
    );
    say(&text);
}

/// Writes to stdout; a closed stdout (`keel up | head`) must not stop Keel.
fn say(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}
