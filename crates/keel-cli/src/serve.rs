//! `keel serve <service>`: one service in this process (the container mode).
//! The subcommands come from the registry, plus the gateway.

use anyhow::Context as _;
use clap::{ArgMatches, Args as _, Command, FromArgMatches, Subcommand};
use keel_gateway::GatewayConfig;
use keel_platform::registry::{self, Launch};
use keel_registry::REGISTRY;
use tokio_util::sync::CancellationToken;

/// The gateway's subcommand name.
const GATEWAY: &str = "gateway";

/// `keel serve <service>`, with that service's settings.
#[derive(Debug)]
pub struct ServeCommand {
    name: String,
    matches: ArgMatches,
}

impl ServeCommand {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Serves it until SIGINT or SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        if self.name == GATEWAY {
            let config = GatewayConfig::from_arg_matches(&self.matches)?;
            let upstreams = REGISTRY.peer_urls(&self.matches, None);
            let listener = keel_platform::serve::server::bind(config.listen).await?;
            let metrics_listener = self.metrics_listener().await?;
            tracing::info!(addr = %config.listen, "gateway listening");
            return until_signal(|shutdown| keel_gateway::run(config, upstreams, listener, metrics_listener, shutdown))
                .await
                .context("the gateway stopped with an error");
        }
        let spec = REGISTRY
            .get(&self.name)
            .with_context(|| format!("no service {}", self.name))?;
        let listen = self
            .matches
            .get_one::<std::net::SocketAddr>("listen")
            .copied()
            .unwrap_or_else(|| spec.default_listen());
        let listener = keel_platform::serve::server::bind(listen).await?;
        let metrics_listener = self.metrics_listener().await?;
        tracing::info!(addr = %listen, "{} listening", spec.name);
        until_signal(|shutdown| async move {
            let service = REGISTRY.start(
                spec,
                Launch {
                    matches: self.matches,
                    listener,
                    shutdown,
                    suite_clients: Vec::new(),
                    data_dir: None,
                    metrics_listener,
                },
            )?;
            service.await
        })
        .await
        .with_context(|| format!("{} stopped with an error", spec.name))
    }
}

impl ServeCommand {
    /// The listener of `--metrics-listen`, when it is set.
    async fn metrics_listener(&self) -> anyhow::Result<Option<tokio::net::TcpListener>> {
        match self.matches.get_one::<std::net::SocketAddr>(registry::METRICS_LISTEN) {
            Some(addr) => Ok(Some(keel_platform::serve::server::bind(*addr).await?)),
            None => Ok(None),
        }
    }
}

impl FromArgMatches for ServeCommand {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        match matches.subcommand() {
            Some((name, matches)) => Ok(Self {
                name: name.to_owned(),
                matches: matches.clone(),
            }),
            None => Err(clap::Error::new(clap::error::ErrorKind::MissingSubcommand)),
        }
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Subcommand for ServeCommand {
    fn augment_subcommands(command: Command) -> Command {
        let gateway = GatewayConfig::augment_args(REGISTRY.peer_url_args(Command::new(GATEWAY), None))
            .arg(registry::metrics_listen_arg())
            .about("The REST/JSON gateway in front of the services.");
        REGISTRY
            .services()
            .fold(command, |command, spec| {
                command.subcommand(REGISTRY.serve_command(spec))
            })
            .subcommand(gateway)
            .subcommand_required(true)
    }

    fn augment_subcommands_for_update(command: Command) -> Command {
        Self::augment_subcommands(command)
    }

    fn has_subcommand(name: &str) -> bool {
        name == GATEWAY || REGISTRY.get(name).is_some()
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
            keel_platform::serve::server::shutdown_signal().await;
            shutdown.cancel();
        })
    };
    let result = serve(shutdown).await;
    signal.abort();
    result
}
