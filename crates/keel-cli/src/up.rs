//! `keel up`: the whole suite on this machine.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use clap::{ArgMatches, Args, Command, FromArgMatches};
use keel_gateway::GatewayConfig;
use keel_platform::registry::{self, Launch};
use keel_registry::REGISTRY;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::database::{Database, DatabaseArgs};

/// `keel up`. Each service reads the rest of its settings from the
/// environment, as `keel serve <service> --help` lists them.
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub listen: Listen,

    /// Where the REST/JSON gateway listens.
    #[arg(long, env = "KEEL_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub gateway_listen: SocketAddr,

    /// Where the gateway serves its Prometheus metrics.
    #[arg(long, env = "KEEL_GATEWAY_METRICS_LISTEN", default_value_t = SocketAddr::from(([127, 0, 0, 1], registry::GATEWAY_METRICS_PORT)))]
    pub gateway_metrics_listen: SocketAddr,
}

/// Where each registered service listens (`--<name>-listen`) and serves its
/// metrics (`--<name>-metrics-listen`).
#[derive(Debug, Clone)]
pub struct Listen {
    grpc: BTreeMap<&'static str, SocketAddr>,
    metrics: BTreeMap<&'static str, SocketAddr>,
}

impl Listen {
    fn grpc(&self, spec: &registry::ServiceSpec) -> SocketAddr {
        self.grpc
            .get(spec.name)
            .copied()
            .unwrap_or_else(|| spec.default_listen())
    }

    fn metrics(&self, spec: &registry::ServiceSpec) -> SocketAddr {
        self.metrics
            .get(spec.name)
            .copied()
            .unwrap_or_else(|| spec.default_metrics_listen())
    }
}

impl Args for Listen {
    fn augment_args(command: Command) -> Command {
        REGISTRY.services().fold(command, |command, spec| {
            command.arg(registry::listen_arg(spec, listen_id(spec.name))).arg(
                clap::Arg::new(metrics_listen_id(spec.name))
                    .long(metrics_listen_id(spec.name))
                    .env(spec.env("METRICS_LISTEN"))
                    .value_parser(clap::value_parser!(SocketAddr))
                    .default_value(spec.default_metrics_listen().to_string())
                    .help(format!("Where {} serves its Prometheus metrics.", spec.name)),
            )
        })
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}

impl FromArgMatches for Listen {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let read = |id: fn(&str) -> String| {
            REGISTRY
                .services()
                .filter_map(|spec| Some((spec.name, *matches.get_one::<SocketAddr>(&id(spec.name))?)))
                .collect()
        };
        Ok(Listen {
            grpc: read(listen_id),
            metrics: read(metrics_listen_id),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// The clap id of a service's listen flag.
fn listen_id(name: &str) -> String {
    format!("{name}-listen")
}

/// The clap id (and flag) of a service's metrics listen flag.
fn metrics_listen_id(name: &str) -> String {
    format!("{name}-metrics-listen")
}

/// Starts Postgres (unless a URL is given), migrates, serves every
/// registered service and the gateway, and stops it all on Ctrl-C or SIGTERM.
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

/// One part of the suite, running.
struct Service {
    name: &'static str,
    /// The gRPC service whose health says it is ready; None for the gateway,
    /// which serves as soon as its socket is bound.
    grpc_name: Option<&'static str>,
    endpoint: String,
    addr: SocketAddr,
    /// Where it serves its metrics.
    metrics: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

async fn serve_all(args: &UpArgs, database: &Database) -> anyhow::Result<()> {
    database.prepare_all().await?;
    let shutdown = CancellationToken::new();
    let clients = REGISTRY.suite_clients();
    let server_url = database.url("postgres")?;

    // Every listener first, so each service knows where its peers are.
    let mut bound = Vec::new();
    for spec in REGISTRY.services() {
        let listen = args.listen.grpc(spec);
        let metrics = args.listen.metrics(spec);
        bound.push((
            spec,
            loopback(listen),
            keel_platform::serve::server::bind(listen).await?,
            bound_metrics(metrics).await?,
        ));
    }
    let addrs: BTreeMap<&'static str, SocketAddr> = bound.iter().map(|(spec, addr, _, _)| (spec.name, *addr)).collect();
    let gateway_listener = keel_platform::serve::server::bind(args.gateway_listen).await?;
    let (gateway_metrics, gateway_metrics_listener) = bound_metrics(args.gateway_metrics_listen).await?;

    let mut services = Vec::new();
    for (spec, addr, listener, (metrics, metrics_listener)) in bound {
        let mut argv = REGISTRY.suite_args(spec, &addrs, &clients);
        argv.extend(["--database-url".to_owned(), server_url.clone()]);
        let matches = REGISTRY.parse(spec, argv)?;
        let serve = REGISTRY.start(
            spec,
            Launch {
                matches,
                listener,
                shutdown: shutdown.clone(),
                suite_clients: clients.entries.clone(),
                data_dir: Some(args.database.data_dir.clone()),
                metrics_listener: Some(metrics_listener),
            },
        )?;
        services.push(Service {
            name: spec.name,
            grpc_name: spec.grpc_services.first().copied(),
            endpoint: format!("grpc://{addr}"),
            addr,
            metrics,
            task: tokio::spawn(serve),
        });
    }
    let gateway_addr = loopback(args.gateway_listen);
    let gateway_config = GatewayConfig::from_args(["keel", "--gateway-listen", &args.gateway_listen.to_string()])?;
    let upstreams = addrs
        .iter()
        .map(|(name, addr)| (*name, format!("http://{addr}")))
        .collect();
    services.push(Service {
        name: "gateway",
        grpc_name: None,
        endpoint: format!("http://{gateway_addr}"),
        addr: gateway_addr,
        metrics: gateway_metrics,
        task: tokio::spawn(keel_gateway::run(
            gateway_config,
            upstreams,
            gateway_listener,
            Some(gateway_metrics_listener),
            shutdown.clone(),
        )),
    });

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
        () = keel_platform::serve::server::shutdown_signal() => Ok(false),
        failed = first_exit(&mut services) => {
            shutdown.cancel();
            return Err(failed);
        }
    };
    if matches!(outcome, Ok(true)) {
        print_banner(&services, database, &args.database.data_dir);
        tokio::select! {
            () = keel_platform::serve::server::shutdown_signal() => say("\nStopping…\n"),
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
    keel_platform::serve::server::wait_until_serving(channel, service, Duration::from_secs(60)).await
}

/// A metrics listener on `addr`, and the address to reach it at (the bound
/// port, so `:0` shows the port chosen).
async fn bound_metrics(addr: SocketAddr) -> anyhow::Result<(SocketAddr, tokio::net::TcpListener)> {
    let listener = keel_platform::serve::server::bind(addr).await?;
    let bound = listener.local_addr().context("reading a metrics address")?;
    Ok((loopback(bound), listener))
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

fn print_banner(services: &[Service], database: &Database, data_dir: &std::path::Path) {
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
    // Where notifications sends mail, as it reads the same settings.
    let mail = match (
        std::env::var_os("KEEL_SMTP_URL"),
        std::env::var_os("KEEL_NOTIFICATIONS_MAIL_DIR"),
    ) {
        (Some(_), _) => "sent over SMTP (KEEL_SMTP_URL)".to_owned(),
        (None, Some(dir)) => format!("written as .eml files to {}", std::path::Path::new(&dir).display()),
        (None, None) => format!(
            "written as .eml files to {} (set KEEL_SMTP_URL to send it)",
            data_dir.join("mail").display()
        ),
    };
    let mut text = String::from("\nKeel is up.\n\n");
    let _ = writeln!(text, "  {:<14} {:<28} {:<8} METRICS", "SERVICE", "ENDPOINT", "HEALTH");
    for service in services {
        let metrics = format!("http://{}/metrics", service.metrics);
        let _ = writeln!(
            text,
            "  {:<14} {:<28} {:<8} {metrics}",
            service.name, service.endpoint, "SERVING"
        );
    }
    let auth = services
        .iter()
        .find(|s| s.name == registry::AUTH)
        .map_or(SocketAddr::from(([127, 0, 0, 1], 50051)), |s| s.addr);
    let gateway = services.iter().find(|s| s.grpc_name.is_none()).map_or(auth, |s| s.addr);
    let _ = write!(
        text,
        "\nPostgres: {postgres}\nMail:     {mail}\n\nTry it:\n  \
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
