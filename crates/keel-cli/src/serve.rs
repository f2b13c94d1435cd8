//! `keel serve <service>`: one service in this process.

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::cli::{AccountsServeArgs, AuthServeArgs};

/// Serves auth until SIGINT or SIGTERM.
pub async fn auth(args: AuthServeArgs) -> anyhow::Result<()> {
    let url = database_url(
        "auth",
        args.auth.auth_database_url.as_deref(),
        args.database_url.as_deref(),
        keel_auth::DATABASE,
    )?;
    let listener = keel_platform::server::bind(args.auth.listen).await?;
    tracing::info!(addr = %args.auth.listen, "auth listening");
    until_signal(|shutdown| keel_auth::run(args.auth, url, listener, shutdown))
        .await
        .context("auth stopped with an error")
}

/// Serves accounts until SIGINT or SIGTERM.
pub async fn accounts(args: AccountsServeArgs) -> anyhow::Result<()> {
    let url = database_url(
        "accounts",
        args.accounts.accounts_database_url.as_deref(),
        args.database_url.as_deref(),
        keel_accounts::DATABASE,
    )?;
    let listener = keel_platform::server::bind(args.accounts.listen).await?;
    tracing::info!(addr = %args.accounts.listen, "accounts listening");
    until_signal(|shutdown| keel_accounts::run(args.accounts, url, listener, shutdown))
        .await
        .context("accounts stopped with an error")
}

/// Serves the gateway until SIGINT or SIGTERM.
pub async fn gateway(config: keel_gateway::GatewayConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(addr = %config.listen, "gateway listening");
    until_signal(|shutdown| keel_gateway::run(config, listener, shutdown))
        .await
        .context("the gateway stopped with an error")
}

/// The service's own URL, or its database on the shared server.
fn database_url(service: &str, own: Option<&str>, server: Option<&str>, database: &str) -> anyhow::Result<String> {
    match (own, server) {
        (Some(url), _) => Ok(url.to_owned()),
        (None, Some(server)) => keel_platform::db::with_database(server, database),
        (None, None) => anyhow::bail!(
            "set KEEL_{}_DATABASE_URL (or KEEL_DATABASE_URL) to the Postgres {service} should use; \
             `keel up` runs a private one for development",
            service.to_uppercase()
        ),
    }
}

/// Runs `serve` with a token that SIGINT or SIGTERM cancels.
async fn until_signal<F, Fut>(serve: F) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let shutdown = CancellationToken::new();
    let signal = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            keel_platform::server::shutdown_signal().await;
            shutdown.cancel();
        })
    };
    let result = serve(shutdown).await;
    signal.abort();
    result
}
