//! How a service describes itself, once, and what it is given to run.
//!
//! Each service crate exports a [`ServiceSpec`]: its name, the gRPC services
//! it serves, its database and migrations, the events it produces and
//! consumes, the scopes its service token needs, its settings and how to
//! start it. A [`Registry`] is the list of them (the `keel-registry` crate
//! holds Keel's). `keel up`, `keel serve`, `keel migrate`, the test suite,
//! the relays' subscriber lists and the gateway's upstreams are all derived
//! from that list, so adding a service is one crate and one line.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use clap::{Arg, ArgMatches, Args as _, Command, FromArgMatches as _};
use diesel_migrations::EmbeddedMigrations;
use futures::future::BoxFuture;
use keel::events::v1::event_sink_server::EventSink;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::{
    auth::service_token::{ClientCredentials, ServiceTokenSource, TokenProvider},
    auth::{auth_service::GrpcKeySource, verifier::Verifier},
    client::{self, ClientConfig, ServiceChannel},
    config::{PoolConfig, ServerConfig, TokenConfig},
    db,
    events::nats::{self, Broker, NatsConfig},
    events::relay::{Relay, RelayConfig, Subscriber},
    events::{EventProducers, EventType, retention},
    serve::metrics::Metrics,
    serve::server::GrpcServer,
};

/// The name of the service that issues tokens: every other service asks it
/// for signing keys and service tokens.
pub const AUTH: &str = "auth";

/// The port `keel up` serves the gateway's metrics on by default, the
/// port Prometheus exporters conventionally use; each service has its own
/// next to it ([`ServiceSpec::default_metrics_port`]).
pub const GATEWAY_METRICS_PORT: u16 = 9464;

/// The future a service runs as.
pub type ServiceFuture = BoxFuture<'static, anyhow::Result<()>>;

/// What a service crate tells the registry about itself.
#[derive(Debug)]
pub struct ServiceSpec {
    /// Its short name: `keel serve <name>`, `KEEL_<NAME>_...` settings, its
    /// service client id, the `<area>` of its `keel.<area>.v1` protos.
    pub name: &'static str,
    /// One line for `keel serve --help`.
    pub about: &'static str,
    /// The fully-qualified gRPC services its port serves (and reflection
    /// lists, and health names).
    pub grpc_services: &'static [&'static str],
    /// The port it listens on by default (on 127.0.0.1).
    pub default_port: u16,
    /// The port `keel up` serves its metrics on by default (on 127.0.0.1);
    /// the gateway's is [`GATEWAY_METRICS_PORT`].
    pub default_metrics_port: u16,
    /// The database it owns.
    pub database: &'static str,
    /// Its embedded migrations.
    pub migrations: fn() -> EmbeddedMigrations,
    /// The folder they come from (tests fingerprint it).
    pub migrations_dir: &'static str,
    /// The events it writes to its outbox.
    pub produces: &'static [EventType],
    /// The events its EventSink accepts.
    pub consumes: &'static [EventType],
    /// The scopes its service token needs (empty: it needs none from auth).
    pub scopes: &'static [&'static str],
    /// Flags it takes when it runs beside the gateway and the other services
    /// on one machine ([`Registry::suite_args`]).
    pub suite_flags: &'static [&'static str],
    /// Adds its own settings to a command (a clap `Args::augment_args`).
    pub settings: fn(Command) -> Command,
    /// Reads its settings and returns the future that serves it: a
    /// service's entry is [`start`]`::<ItsSettings>`.
    pub start: fn(&ArgMatches, Context) -> anyhow::Result<ServiceFuture>,
}

/// A service's settings, and how the service runs from them.
pub trait Service: clap::FromArgMatches + Sized + Send + 'static {
    /// Serves until the context's shutdown.
    fn run(self, context: Context) -> impl Future<Output = anyhow::Result<()>> + Send + 'static;
}

/// Reads `S`'s settings and returns the future that serves it: every
/// service's [`ServiceSpec::start`].
pub fn start<S: Service>(settings: &ArgMatches, context: Context) -> anyhow::Result<ServiceFuture> {
    let settings = S::from_arg_matches(settings)?;
    Ok(Box::pin(settings.run(context)))
}

impl ServiceSpec {
    /// `KEEL_<NAME>_<suffix>`.
    pub fn env(&self, suffix: &str) -> String {
        format!("KEEL_{}_{suffix}", self.name.to_uppercase())
    }

    /// Where it listens unless told otherwise.
    pub fn default_listen(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.default_port))
    }

    /// Where `keel up` serves its metrics unless told otherwise.
    pub fn default_metrics_listen(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.default_metrics_port))
    }
}

/// The services of one suite.
#[derive(Debug, Clone, Copy)]
pub struct Registry(pub &'static [&'static ServiceSpec]);

impl Registry {
    /// Every service, in start order (auth first: the others need its keys).
    pub fn services(&self) -> impl Iterator<Item = &'static ServiceSpec> + '_ {
        self.0.iter().copied()
    }

    /// The service called `name`.
    pub fn get(&self, name: &str) -> Option<&'static ServiceSpec> {
        self.services().find(|s| s.name == name)
    }

    /// The services that consume what `producer` produces, with the event
    /// types each wants.
    pub fn subscribers_of(&self, producer: &ServiceSpec) -> Vec<(&'static ServiceSpec, Vec<EventType>)> {
        self.services()
            .filter(|consumer| consumer.name != producer.name)
            .filter_map(|consumer| {
                let wanted: Vec<EventType> = producer
                    .produces
                    .iter()
                    .copied()
                    .filter(|t| consumer.consumes.contains(t))
                    .collect();
                (!wanted.is_empty()).then_some((consumer, wanted))
            })
            .collect()
    }

    /// Which service produces each event type; an error when two services
    /// claim one type (then neither could be told from a forger).
    pub fn event_producers(&self) -> anyhow::Result<EventProducers> {
        EventProducers::new(
            self.services()
                .flat_map(|spec| spec.produces.iter().map(move |t| (*t, spec.name))),
        )
    }

    /// `--<peer>-url` (`KEEL_<PEER>_URL`) for every service but `except`.
    pub fn peer_url_args(&self, command: Command, except: Option<&str>) -> Command {
        self.services()
            .filter(|peer| Some(peer.name) != except)
            .fold(command, |command, peer| {
                command.arg(
                    Arg::new(url_id(peer.name))
                        .long(format!("{}-url", peer.name))
                        .env(peer.env("URL"))
                        .default_value(format!("http://{}", peer.default_listen()))
                        .help(format!("Where {} serves gRPC.", peer.name)),
                )
            })
    }

    /// The peer URLs read by [`Registry::peer_url_args`].
    pub fn peer_urls(&self, matches: &ArgMatches, except: Option<&str>) -> BTreeMap<&'static str, String> {
        self.services()
            .filter(|peer| Some(peer.name) != except)
            .filter_map(|peer| {
                let url = matches.get_one::<String>(&url_id(peer.name))?;
                Some((peer.name, url.clone()))
            })
            .collect()
    }

    /// The command `keel serve <name>` parses: the service's own settings and
    /// those every service takes (where it listens, its database, its peers,
    /// its client credentials, the relay, NATS and client settings).
    pub fn serve_command(&self, spec: &'static ServiceSpec) -> Command {
        let command = Command::new(spec.name)
            .about(spec.about)
            .arg(listen_arg(spec, "listen"))
            .arg(metrics_listen_arg())
            .arg(
                Arg::new("server-database-url")
                    .long("database-url")
                    .env("KEEL_DATABASE_URL")
                    .hide_env_values(true)
                    .help(format!(
                        "The Postgres server; {} uses its `{}` database on it.",
                        spec.name, spec.database
                    )),
            )
            .arg(
                Arg::new("database-url")
                    .long(format!("{}-database-url", spec.name))
                    .env(spec.env("DATABASE_URL"))
                    .hide_env_values(true)
                    .help(format!("{}'s own database (overrides KEEL_DATABASE_URL).", spec.name)),
            )
            .arg(
                Arg::new("service-client-secret")
                    .long("service-client-secret")
                    .env("KEEL_SERVICE_CLIENT_SECRET")
                    .hide_env_values(true)
                    .help(format!(
                        "The secret of service client `{}` on auth (see KEEL_SERVICE_CLIENTS), for calls to \
                         other services.",
                        spec.name
                    )),
            );
        let command = ClientConfig::augment_args(NatsConfig::augment_args(RelayConfig::augment_args(command)));
        (spec.settings)(self.peer_url_args(command, Some(spec.name)))
    }
}

impl Registry {
    /// Parses `spec`'s [`Registry::serve_command`] from `args` (the first is
    /// the program name), with the environment filling in the rest.
    pub fn parse<I, T>(&self, spec: &'static ServiceSpec, args: I) -> anyhow::Result<ArgMatches>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        self.serve_command(spec)
            .try_get_matches_from(args)
            .with_context(|| format!("{}'s settings", spec.name))
    }

    /// The flags that wire `spec` into a suite whose services listen at
    /// `addrs` (by name) on this machine: every peer's URL and `spec`'s client
    /// secret. The first is the program name, for [`Registry::parse`].
    pub fn suite_args(
        &self,
        spec: &ServiceSpec,
        addrs: &BTreeMap<&'static str, SocketAddr>,
        clients: &SuiteClients,
    ) -> Vec<String> {
        let mut args = vec!["keel".to_owned()];
        for (peer, addr) in addrs.iter().filter(|(peer, _)| **peer != spec.name) {
            args.extend([format!("--{peer}-url"), format!("http://{addr}")]);
        }
        args.extend(spec.suite_flags.iter().map(|flag| (*flag).to_owned()));
        if let Some(secret) = clients.secrets.get(spec.name) {
            // `=`: a secret may start with `-`.
            args.push(format!("--service-client-secret={}", secret.expose_secret()));
        }
        if spec.produces.iter().chain(spec.consumes).any(|t| t.carries_secret()) {
            args.push(format!(
                "--event-secrets-key={}",
                clients.event_secrets_key.expose_secret()
            ));
        }
        args
    }

    /// A fresh secret for every service that needs service tokens, and the
    /// KEEL_SERVICE_CLIENTS entries that register them on auth: how a suite
    /// that runs every service in one place wires their credentials.
    pub fn suite_clients(&self) -> SuiteClients {
        use base64::Engine as _;
        let mut secrets = BTreeMap::new();
        let mut entries = Vec::new();
        for spec in self.services().filter(|s| !s.scopes.is_empty()) {
            let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
            entries.push(format!("{}:{secret}:{}", spec.name, spec.scopes.join(" ")).into());
            secrets.insert(spec.name, secret.into());
        }
        let event_secrets_key = base64::engine::general_purpose::STANDARD
            .encode(rand::random::<[u8; 32]>())
            .into();
        SuiteClients {
            secrets,
            entries,
            event_secrets_key,
        }
    }

    /// Starts `spec` with the settings in `launch`, on its listener. Its
    /// database (named by the settings) must exist.
    pub fn start(&self, spec: &'static ServiceSpec, launch: Launch) -> anyhow::Result<ServiceFuture> {
        let wiring = Wiring::from_matches(self, spec, &launch.matches)?;
        let database_url = wiring.database_url.clone().with_context(|| {
            format!(
                "set {} (or KEEL_DATABASE_URL) to the Postgres {} should use; `keel up` runs a private one for \
                 development",
                spec.env("DATABASE_URL"),
                spec.name
            )
        })?;
        let metrics = Metrics::new(spec.name);
        crate::serve::metrics::spawn(launch.metrics_listener, &metrics, &launch.shutdown);
        // A sink refuses events older than its processed_events rows last.
        let event_producers = self.event_producers()?.with_max_age(wiring.relay.event_horizon());
        let context = Context {
            spec,
            database_url,
            listener: launch.listener,
            shutdown: launch.shutdown,
            wiring,
            subscribers: self
                .subscribers_of(spec)
                .into_iter()
                .map(|(consumer, types)| (consumer.name, types))
                .collect(),
            suite_clients: launch.suite_clients,
            event_producers,
            data_dir: launch.data_dir,
            metrics,
        };
        (spec.start)(&launch.matches, context)
    }
}

/// What [`Registry::start`] needs besides the service's description.
#[derive(Debug)]
pub struct Launch {
    /// The service's settings, from [`Registry::parse`].
    pub matches: ArgMatches,
    /// The bound listener.
    pub listener: TcpListener,
    /// Cancelled to stop it.
    pub shutdown: CancellationToken,
    /// See [`Context::suite_clients`].
    pub suite_clients: Vec<SecretString>,
    /// See [`Context::data_dir`].
    pub data_dir: Option<std::path::PathBuf>,
    /// Where its Prometheus metrics are served (`/metrics`); None serves
    /// them nowhere.
    pub metrics_listener: Option<TcpListener>,
}

/// The service clients of a suite, from [`Registry::suite_clients`], and the
/// key its services seal event secrets with.
#[derive(Debug, Clone)]
pub struct SuiteClients {
    /// Each service's secret, by name.
    pub secrets: BTreeMap<&'static str, SecretString>,
    /// The KEEL_SERVICE_CLIENTS entries for auth.
    pub entries: Vec<SecretString>,
    /// KEEL_EVENT_SECRETS_KEY, for the services that produce or consume
    /// events carrying secrets.
    pub event_secrets_key: SecretString,
}

/// `--<name>-listen` (`KEEL_<NAME>_LISTEN`), with the given id.
pub fn listen_arg(spec: &ServiceSpec, id: impl Into<clap::Id>) -> Arg {
    Arg::new(id)
        .long(format!("{}-listen", spec.name))
        .env(spec.env("LISTEN"))
        .value_parser(clap::value_parser!(SocketAddr))
        .default_value(spec.default_listen().to_string())
        .help(format!("Where {} listens for gRPC.", spec.name))
}

/// The clap id of [`metrics_listen_arg`].
pub const METRICS_LISTEN: &str = "metrics-listen";

/// `--metrics-listen` (`KEEL_METRICS_LISTEN`): where one process serves
/// its Prometheus metrics; unset, it serves none.
pub fn metrics_listen_arg() -> Arg {
    Arg::new(METRICS_LISTEN)
        .long(METRICS_LISTEN)
        .env("KEEL_METRICS_LISTEN")
        .value_parser(clap::value_parser!(SocketAddr))
        .help("Where Prometheus scrapes this process's metrics (GET /metrics), e.g. 0.0.0.0:9464; unset, none are served.")
}

fn url_id(name: &str) -> String {
    format!("{name}-url")
}

/// The settings every service takes, read from a [`Registry::serve_command`]
/// match.
#[derive(Debug, Clone)]
pub struct Wiring {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Its database: its own URL, or its database on the shared server.
    pub database_url: Option<String>,
    /// Where every other service serves gRPC.
    pub peers: BTreeMap<&'static str, String>,
    /// Its secret as a service client of auth.
    pub client_secret: Option<SecretString>,
    /// How it calls other services.
    pub client: ClientConfig,
    /// How its relay paces itself.
    pub relay: RelayConfig,
    /// The event broker, when events go through NATS.
    pub nats: NatsConfig,
}

impl Wiring {
    /// Reads what [`Registry::serve_command`] declared.
    pub fn from_matches(registry: &Registry, spec: &ServiceSpec, matches: &ArgMatches) -> anyhow::Result<Self> {
        let database_url = match (
            matches.get_one::<String>("database-url"),
            matches.get_one::<String>("server-database-url"),
        ) {
            (Some(own), _) => Some(own.clone()),
            (None, Some(server)) => Some(db::with_database(server, spec.database)?),
            (None, None) => None,
        };
        Ok(Self {
            listen: matches
                .get_one::<SocketAddr>("listen")
                .copied()
                .unwrap_or_else(|| spec.default_listen()),
            database_url,
            peers: registry.peer_urls(matches, Some(spec.name)),
            client_secret: matches
                .get_one::<String>("service-client-secret")
                .map(|secret| SecretString::from(secret.as_str())),
            client: ClientConfig::from_arg_matches(matches)?,
            relay: {
                let relay = RelayConfig::from_arg_matches(matches)?;
                relay.check()?;
                relay
            },
            nats: NatsConfig::from_arg_matches(matches)?,
        })
    }
}

/// What a running service is given: its listener and database, a way to
/// reach its peers, and the subscribers of its events.
#[derive(Debug)]
pub struct Context {
    /// Its own description.
    pub spec: &'static ServiceSpec,
    /// Its (existing) database.
    pub database_url: String,
    /// The bound listener it serves on.
    pub listener: TcpListener,
    /// Cancelled to stop it.
    pub shutdown: CancellationToken,
    /// The rest of its settings.
    pub wiring: Wiring,
    /// Who receives its events: each consumer's name and the types it wants.
    pub subscribers: Vec<(&'static str, Vec<EventType>)>,
    /// Service clients auth should accept besides its configured ones
    /// (`client_id:secret:scope ...`): those the suite registers for its own
    /// services when it runs them all. Only auth reads it.
    pub suite_clients: Vec<SecretString>,
    /// Which service produces each event type: an event sink accepts an
    /// event only from its type's producer, and only while it is younger
    /// than the horizon of the service's `processed_events` retention (see
    /// [`crate::events::delivery`]).
    pub event_producers: EventProducers,
    /// The folder of the machine's suite (`keel up`'s data folder), for what
    /// a service keeps as files when nothing else is configured (mail as
    /// `.eml` files); None when it runs on its own.
    pub data_dir: Option<std::path::PathBuf>,
    /// Its metrics: the server, the pool and the relay register theirs in
    /// [`Context::serve`]; a service registers its own at start.
    pub metrics: Metrics,
}

impl Context {
    /// A plain channel to peer `name`.
    pub fn peer(&self, name: &str) -> anyhow::Result<tonic::transport::Channel> {
        let url = self
            .wiring
            .peers
            .get(name)
            .with_context(|| format!("{} has no URL for {name}", self.spec.name))?;
        client::channel(url, &self.wiring.client).with_context(|| format!("KEEL_{}_URL", name.to_uppercase()))
    }

    /// Migrates the service's database (its spec's migrations) and returns a
    /// pool on it.
    pub async fn migrated_pool(&self, pool: &PoolConfig) -> anyhow::Result<db::Pool> {
        db::migrate(&self.database_url, (self.spec.migrations)())
            .await
            .with_context(|| format!("migrating {}", self.spec.database))?;
        db::pool(&self.database_url, pool)
    }

    /// A verifier for access tokens, with keys fetched from auth and auth's
    /// revocations followed until shutdown.
    pub fn verifier(&self, tokens: &TokenConfig) -> anyhow::Result<Arc<Verifier>> {
        let auth = Arc::new(GrpcKeySource::new(self.peer(AUTH)?));
        let verifier = Arc::new(Verifier::new(
            &tokens.token_issuer,
            &tokens.token_audience,
            auth.clone(),
        ));
        verifier.follow_revocations(auth, self.shutdown.clone());
        Ok(verifier)
    }

    /// This service's tokens from auth (client credentials), renewed before
    /// they expire; an error when no client secret is configured.
    pub fn service_tokens(&self) -> anyhow::Result<Arc<dyn TokenProvider>> {
        let secret = self.wiring.client_secret.clone().with_context(|| {
            format!(
                "{} calls other services but KEEL_SERVICE_CLIENT_SECRET is not set (register client `{}` on auth \
                 with KEEL_SERVICE_CLIENTS)",
                self.spec.name, self.spec.name
            )
        })?;
        let credentials = ClientCredentials {
            client_id: self.spec.name.to_owned(),
            client_secret: secret,
        };
        Ok(Arc::new(ServiceTokenSource::new(
            self.peer(AUTH)?,
            credentials,
            self.spec.scopes,
        )))
    }

    /// A channel to peer `name` whose calls carry `tokens`.
    pub fn service_channel(&self, name: &str, tokens: Arc<dyn TokenProvider>) -> anyhow::Result<ServiceChannel> {
        Ok(ServiceChannel::new(self.peer(name)?, tokens))
    }

    /// Serves `service` on the listener until shutdown, with the relay of
    /// this service's outbox running beside it when it produces events, and
    /// the pruning of its `processed_events` when it consumes them. With
    /// NATS configured, the relay publishes to JetStream and a consuming
    /// service also reads its durable consumer there, applying each event
    /// through its own EventSink ([`Serving::event_sink`]).
    pub async fn serve(self, service: Serving) -> anyhow::Result<()> {
        // One connection per process, for the relay and the consumer.
        let broker = if self.wiring.nats.enabled() {
            Some(Broker::new(
                self.wiring.nats.clone(),
                self.spec.name,
                nats::duplicate_window(&self.wiring.relay),
            )?)
        } else {
            None
        };
        let consumer = match &broker {
            Some(broker) if !self.spec.consumes.is_empty() => {
                let sink = service.event_sink.clone().with_context(|| {
                    format!(
                        "{} consumes events but gives no event sink to apply them",
                        self.spec.name
                    )
                })?;
                Some(nats::Consumer::new(
                    broker.clone(),
                    self.spec.name,
                    self.spec.consumes.to_vec(),
                    sink,
                    self.event_producers.clone(),
                    std::time::Duration::from_millis(self.wiring.relay.relay_max_backoff_ms),
                    &self.metrics,
                ))
            }
            _ => None,
        };
        let relay = if self.spec.produces.is_empty() {
            None
        } else {
            let relay = match &broker {
                // The broker fans out: no subscribers, so no service token.
                Some(broker) => Relay::new(
                    self.database_url.clone(),
                    service.pool.clone(),
                    Vec::new(),
                    self.wiring.relay.clone(),
                    &self.metrics,
                )
                .through_nats(broker.clone()),
                None => Relay::new(
                    self.database_url.clone(),
                    service.pool.clone(),
                    self.subscribers(&service)?,
                    self.wiring.relay.clone(),
                    &self.metrics,
                ),
            };
            Some(tokio::spawn(relay.run(self.shutdown.clone())))
        };
        let consumer = consumer.map(|consumer| tokio::spawn(consumer.run(self.shutdown.clone())));
        // Here, not in each service, so no consumer can forget it.
        let pruner = (!self.spec.consumes.is_empty()).then(|| {
            tokio::spawn(retention::run(
                service.pool.clone(),
                self.wiring.relay.processed_events_retention(),
                self.shutdown.clone(),
            ))
        });
        service.pool.register_metrics(&self.metrics);
        let server = GrpcServer {
            service_names: self.spec.grpc_services.to_vec(),
            routes: service.routes,
            verifier: service.verifier,
            database_url: self.database_url,
            config: service.server,
            metrics: self.metrics,
        };
        let result = server.run(self.listener, self.shutdown).await;
        // The relay releases what it has not sent and stops, the consumer
        // settles the event it is applying; give them a moment.
        if let Some(relay) = relay
            && tokio::time::timeout(std::time::Duration::from_secs(2), relay)
                .await
                .is_err()
        {
            tracing::warn!("the outbox relay did not stop in time");
        }
        if let Some(consumer) = consumer
            && tokio::time::timeout(std::time::Duration::from_secs(2), consumer)
                .await
                .is_err()
        {
            tracing::warn!("the NATS consumer did not stop in time");
        }
        // It stops on shutdown by itself; a delete cut short is redone later.
        if let Some(pruner) = pruner {
            pruner.abort();
        }
        result
    }

    /// The relay's subscribers for direct delivery: each consumer's
    /// EventSink, called with the service's token.
    fn subscribers(&self, service: &Serving) -> anyhow::Result<Vec<Subscriber>> {
        match &service.tokens {
            Some(tokens) => self
                .subscribers
                .iter()
                .map(|(name, event_types)| {
                    Ok(Subscriber {
                        name,
                        channel: self.service_channel(name, tokens.clone())?,
                        event_types: event_types.clone(),
                    })
                })
                .collect(),
            None if self.subscribers.is_empty() => Ok(Vec::new()),
            None => anyhow::bail!("{} has subscribers but no service token to reach them", self.spec.name),
        }
    }
}

/// A service, built and ready for [`Context::serve`].
#[allow(missing_debug_implementations)]
pub struct Serving {
    /// Its gRPC services (exactly its spec's `grpc_services`).
    pub routes: Routes,
    /// Verifies bearer tokens on every call.
    pub verifier: Arc<Verifier>,
    /// Its database pool (the relay shares it).
    pub pool: db::Pool,
    /// The token its relay presents to subscribers; None only for a service
    /// whose events nobody consumes.
    pub tokens: Option<Arc<dyn TokenProvider>>,
    /// Its EventSink, for a service that consumes events: with NATS, each
    /// event from the broker goes through it in-process, so it meets the
    /// same checks and `processed_events` as one delivered over gRPC.
    /// (The gRPC EventSink stays served either way: relays not yet moved to
    /// NATS keep delivering to it while a deployment switches over.)
    pub event_sink: Option<Arc<dyn EventSink>>,
    /// Timeouts and limits.
    pub server: ServerConfig,
}
