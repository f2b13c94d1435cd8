//! `keel up`: the whole suite on this machine, each service and the gateway
//! once, or as several replicas (`--replicas`). Where the replicas listen is
//! in `replicas`, the banner that lists it all in `banner`.

mod banner;
mod replicas;

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

    /// Serve the interactive API reference at the gateway's /docs (off by
    /// default in `keel serve gateway`, on here).
    #[arg(long, env = "KEEL_GATEWAY_DOCS", default_value_t = true, action = clap::ArgAction::Set)]
    pub gateway_docs: bool,

    /// How many replicas of each service and of the gateway to run, all on
    /// the one Postgres. The first of each listens where its listen flags
    /// say; the other gateways on the ports after the gateway's, the other
    /// service replicas and metrics listeners on ports the system picks
    /// (the banner lists them all). Every client balances its calls over a
    /// service's replicas.
    #[arg(long, env = "KEEL_UP_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=replicas::MAX))]
    pub replicas: u16,
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
    /// Which replica of it this is (0 for the first).
    replica: usize,
    /// The gRPC service whose health says it is ready; None for the gateway,
    /// which serves as soon as its socket is bound.
    grpc_name: Option<&'static str>,
    endpoint: String,
    addr: SocketAddr,
    /// Where it serves its metrics.
    metrics: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

/// One replica of a service, its sockets bound, not yet started.
struct Bound {
    spec: &'static registry::ServiceSpec,
    replica: usize,
    addr: SocketAddr,
    listener: tokio::net::TcpListener,
    metrics: SocketAddr,
    metrics_listener: tokio::net::TcpListener,
}

/// How waiting for services to report SERVING ended.
enum Waited {
    Serving,
    /// A shutdown signal came first.
    Stopping,
    /// A service stopped first.
    Failed(anyhow::Error),
}

async fn serve_all(args: &UpArgs, database: &Database) -> anyhow::Result<()> {
    database.prepare_all().await?;
    let shutdown = CancellationToken::new();
    let clients = REGISTRY.suite_clients();
    let server_url = database.url("postgres")?;
    let replicas = usize::from(args.replicas.max(1));

    // Every listener first, so each service knows where its peers are.
    let mut bound = Vec::new();
    for spec in REGISTRY.services() {
        for replica in 0..replicas {
            let listen = replicas::replica_listen(args.listen.grpc(spec), replica);
            let listener = keel_platform::serve::server::bind(listen).await?;
            let addr = loopback(listener.local_addr().context("reading a service's address")?);
            let metrics_listen = replicas::replica_listen(args.listen.metrics(spec), replica);
            let (metrics, metrics_listener) = bound_metrics(metrics_listen).await?;
            bound.push(Bound {
                spec,
                replica,
                addr,
                listener,
                metrics,
                metrics_listener,
            });
        }
    }
    // Each service's URL names every replica of it, for clients to balance over.
    let urls: BTreeMap<&'static str, String> = REGISTRY
        .services()
        .map(|spec| {
            let addrs: Vec<SocketAddr> = bound
                .iter()
                .filter(|b| b.spec.name == spec.name)
                .map(|b| b.addr)
                .collect();
            (spec.name, replicas::url(&addrs))
        })
        .collect();
    let addrs: BTreeMap<&'static str, SocketAddr> = bound
        .iter()
        .filter(|b| b.replica == 0)
        .map(|b| (b.spec.name, b.addr))
        .collect();
    let mut gateways = Vec::new();
    for replica in 0..replicas {
        let listen = replicas::gateway_listen(args.gateway_listen, replica)?;
        let listener = keel_platform::serve::server::bind(listen).await?;
        let metrics_listen = replicas::replica_listen(args.gateway_metrics_listen, replica);
        gateways.push((listen, listener, bound_metrics(metrics_listen).await?));
    }

    let start = |bound: Bound| -> anyhow::Result<Service> {
        let mut argv = REGISTRY.suite_args(bound.spec, &addrs, &clients);
        for (peer, url) in urls.iter().filter(|(peer, _)| **peer != bound.spec.name) {
            replicas::set_flag(&mut argv, &format!("--{peer}-url"), url);
        }
        argv.extend(["--database-url".to_owned(), server_url.clone()]);
        let matches = REGISTRY.parse(bound.spec, argv)?;
        let serve = REGISTRY.start(
            bound.spec,
            Launch {
                matches,
                listener: bound.listener,
                shutdown: shutdown.clone(),
                suite_clients: clients.entries.clone(),
                data_dir: Some(args.database.data_dir.clone()),
                metrics_listener: Some(bound.metrics_listener),
            },
        )?;
        Ok(Service {
            name: bound.spec.name,
            replica: bound.replica,
            grpc_name: bound.spec.grpc_services.first().copied(),
            endpoint: format!("grpc://{}", bound.addr),
            addr: bound.addr,
            metrics: bound.metrics,
            task: tokio::spawn(serve),
        })
    };

    // The first replica of each service, then the others once those serve:
    // the first auth makes the signing key of a new database, so no two
    // auth replicas make one each.
    let (first, others): (Vec<Bound>, Vec<Bound>) = bound.into_iter().partition(|b| b.replica == 0);
    let mut services = first.into_iter().map(&start).collect::<anyhow::Result<Vec<_>>>()?;
    for (replica, (listen, listener, (metrics, metrics_listener))) in gateways.into_iter().enumerate() {
        let addr = loopback(listener.local_addr().context("reading the gateway's address")?);
        let gateway_config = GatewayConfig::from_args([
            "keel",
            "--gateway-listen",
            &listen.to_string(),
            "--gateway-docs",
            &args.gateway_docs.to_string(),
        ])?;
        services.push(Service {
            name: "gateway",
            replica,
            grpc_name: None,
            endpoint: format!("http://{addr}"),
            addr,
            metrics,
            task: tokio::spawn(keel_gateway::run(
                gateway_config,
                urls.clone(),
                listener,
                Some(metrics_listener),
                shutdown.clone(),
            )),
        });
    }
    let mut outcome = until_serving(&mut services, 0).await;
    if matches!(outcome, Ok(Waited::Serving)) && !others.is_empty() {
        let from = services.len();
        for bound in others {
            match start(bound) {
                Ok(service) => services.push(service),
                Err(err) => {
                    shutdown.cancel();
                    return Err(err);
                }
            }
        }
        outcome = until_serving(&mut services, from).await;
    }
    let outcome = match outcome {
        Ok(Waited::Failed(failed)) => {
            shutdown.cancel();
            return Err(failed);
        }
        Ok(Waited::Serving) => {
            // Listed by service, each one's replicas in order, the gateways last.
            services.sort_by_key(|s| {
                (
                    s.grpc_name.is_none(),
                    REGISTRY.services().position(|spec| spec.name == s.name),
                    s.replica,
                )
            });
            banner::print(
                &services,
                replicas,
                &urls,
                database,
                &args.database.data_dir,
                args.gateway_docs,
            );
            tokio::select! {
                () = keel_platform::serve::server::shutdown_signal() => say("\nStopping…\n"),
                failed = first_exit(&mut services) => {
                    shutdown.cancel();
                    return Err(failed);
                }
            }
            Ok(())
        }
        Ok(Waited::Stopping) => Ok(()),
        Err(err) => Err(err),
    };
    shutdown.cancel();
    for service in services {
        service
            .task
            .await
            .with_context(|| format!("{} panicked", service.name))??;
    }
    outcome
}

/// Waits until the services from `services[from]` on report SERVING; a
/// service that fails meanwhile is reported at once.
async fn until_serving(services: &mut [Service], from: usize) -> anyhow::Result<Waited> {
    let health_checks: Vec<(SocketAddr, &'static str)> = services[from..]
        .iter()
        .filter_map(|s| s.grpc_name.map(|name| (s.addr, name)))
        .collect();
    let ready = async {
        for (addr, grpc_name) in health_checks {
            wait_until_serving(addr, grpc_name).await?;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        ready = ready => ready.map(|()| Waited::Serving),
        () = keel_platform::serve::server::shutdown_signal() => Ok(Waited::Stopping),
        failed = first_exit(services) => Ok(Waited::Failed(failed)),
    }
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

/// Writes to stdout; a closed stdout (`keel up | head`) must not stop Keel.
fn say(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}
