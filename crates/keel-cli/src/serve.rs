//! `keel serve <service>`: one service in this process.

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::cli::AuthServeArgs;

/// Serves auth until SIGINT or SIGTERM.
pub async fn auth(args: AuthServeArgs) -> anyhow::Result<()> {
    let url = match (&args.auth.auth_database_url, &args.database_url) {
        (Some(url), _) => url.clone(),
        (None, Some(server)) => keel_platform::db::with_database(server, keel_auth::DATABASE)?,
        (None, None) => anyhow::bail!(
            "set KEEL_AUTH_DATABASE_URL (or KEEL_DATABASE_URL) to the Postgres auth should use; \
             `keel up` runs a private one for development"
        ),
    };
    let listener = keel_platform::server::bind(args.auth.listen).await?;
    tracing::info!(addr = %args.auth.listen, "auth listening");
    let shutdown = CancellationToken::new();
    let signal = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            keel_platform::server::shutdown_signal().await;
            shutdown.cancel();
        })
    };
    let result = keel_auth::run(args.auth, url, listener, shutdown)
        .await
        .context("auth stopped with an error");
    signal.abort();
    result
}
