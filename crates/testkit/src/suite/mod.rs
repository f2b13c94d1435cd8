//! The whole suite in-process: every registered service on port 0 against
//! its own fresh database, with typed clients and helpers for the usual first
//! steps. The services come from the registry, so a new service is part of
//! every suite without a change here.
//!
//! Starting and stopping services is here; running several replicas of
//! each (and reaching, stopping and restarting one of them) is in
//! `replicas`; typed shortcuts to auth and accounts are in `clients`, the
//! usual first steps (users signed in, service tokens, what auth wrote) in
//! `users`.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use clap::FromArgMatches as _;
use keel::auth::v1 as pb;
use keel_auth::AuthConfig;
use keel_platform::{
    registry::{self, Launch, ServiceSpec, SuiteClients},
    sealing::SealingKey,
};
use keel_registry::REGISTRY;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::database::{Schema, TestDatabase};

mod clients;
mod replicas;
mod users;

pub use replicas::Replica;
pub use users::authorized;

/// The service client every suite configures on auth.
pub const TEST_CLIENT_ID: &str = "test-relay";
/// Its secret.
pub const TEST_CLIENT_SECRET: &str = "test-relay-secret-0123456789";
/// Its scopes.
pub const TEST_CLIENT_SCOPES: &str = "events.deliver accounts.deposit accounts.debit accounts.refund";

/// A client that may speak for auth's relay (as auth's own relay does), for
/// tests that deliver auth's events themselves.
pub const AUTH_RELAY_CLIENT_ID: &str = "auth";
/// Its secret.
pub const AUTH_RELAY_CLIENT_SECRET: &str = "auth-relay-secret-0123456789";

/// The database schema of a registered service.
pub fn schema(spec: &'static ServiceSpec) -> Schema {
    Schema {
        name: spec.name,
        migrations: spec.migrations,
        dir: spec.migrations_dir,
    }
}

/// How to start a suite.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Extra `keel serve <service>` flags, by service name.
    pub args: BTreeMap<&'static str, Vec<String>>,
    /// Services that do not start with the suite (see [`Suite::start`]).
    pub withheld: Vec<&'static str>,
    /// How many replicas of each service run (see [`SuiteOptions::replicas`]).
    pub replicas: usize,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        Self {
            args: BTreeMap::new(),
            withheld: Vec::new(),
            replicas: 1,
        }
    }
}

impl SuiteOptions {
    /// Adds `args` to service `name`'s flags.
    pub fn args(mut self, name: &'static str, args: &[&str]) -> Self {
        self.args
            .entry(name)
            .or_default()
            .extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Leaves service `name` stopped until [`Suite::start`].
    pub fn withhold(mut self, name: &'static str) -> Self {
        self.withheld.push(name);
        self
    }

    /// Runs `n` replicas of each service (1 by default), each on a port of
    /// its own, all on the service's one database. Every URL the suite hands
    /// out (each service's `--<peer>-url`, so its clients and its relay's
    /// subscribers, and the upstreams of [`Suite::spawn_gateway`]) lists
    /// every replica's address, comma-separated, so each call is balanced
    /// over them.
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }
}

/// A running service.
#[derive(Debug)]
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    /// Why it stopped, if it failed: a service that fails at start is
    /// reported at once, not after the wait for SERVING runs out.
    failed: tokio::sync::watch::Receiver<Option<String>>,
    /// Where it serves its metrics.
    metrics: SocketAddr,
}

impl Running {
    /// Runs `serve` on a task of its own.
    fn spawn(serve: keel_platform::registry::ServiceFuture, shutdown: CancellationToken, metrics: SocketAddr) -> Self {
        let (failure, failed) = tokio::sync::watch::channel(None);
        let task = tokio::spawn(async move {
            let served = serve.await;
            if let Err(err) = &served {
                failure.send_replace(Some(format!("{err:#}")));
            }
            served
        });
        Self {
            shutdown,
            task,
            failed,
            metrics,
        }
    }
}

/// One service of the suite.
#[derive(Debug)]
struct Member {
    spec: &'static ServiceSpec,
    /// The channel the suite's own clients use: to the one instance, or
    /// balanced over the replicas.
    channel: Channel,
    db: TestDatabase,
    /// Its `keel serve` command line, every instance's.
    argv: Vec<String>,
    /// Its replicas (one unless [`SuiteOptions::replicas`] says more).
    instances: Vec<Instance>,
}

/// One replica of a service, on an address of its own.
#[derive(Debug)]
struct Instance {
    addr: SocketAddr,
    /// A channel to this replica alone.
    channel: Channel,
    running: Option<Running>,
}

/// A running suite; dropping it shuts every service down.
#[derive(Debug)]
pub struct Suite {
    members: Vec<Member>,
    clients: SuiteClients,
    auth_config: AuthConfig,
    /// The suite's data folder (removed with it): what `keel up`'s is.
    data_dir: std::path::PathBuf,
}

/// Starts the suite with default settings.
pub async fn spawn_suite() -> anyhow::Result<Suite> {
    spawn_suite_with_options(SuiteOptions::default()).await
}

/// Starts the suite; `auth_args` are extra `keel serve auth` flags.
pub async fn spawn_suite_with(auth_args: &[&str]) -> anyhow::Result<Suite> {
    spawn_suite_with_options(SuiteOptions::default().args(registry::AUTH, auth_args)).await
}

/// Starts the suite as `options` say.
pub async fn spawn_suite_with_options(options: SuiteOptions) -> anyhow::Result<Suite> {
    let replicas = options.replicas.max(1);
    let databases =
        futures::future::try_join_all(REGISTRY.services().map(|spec| TestDatabase::create(schema(spec)))).await?;
    // Every listener first, so each service knows where its peers are.
    let mut listeners = Vec::new();
    for _ in REGISTRY.services() {
        let mut own = Vec::new();
        for _ in 0..replicas {
            own.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
        }
        listeners.push(own);
    }
    let addrs: BTreeMap<&'static str, Vec<SocketAddr>> = REGISTRY
        .services()
        .zip(&listeners)
        .map(|(spec, own)| {
            let addrs = own.iter().map(|l| l.local_addr()).collect::<std::io::Result<_>>()?;
            Ok((spec.name, addrs))
        })
        .collect::<anyhow::Result<_>>()?;
    let first: BTreeMap<&'static str, SocketAddr> = addrs.iter().map(|(name, all)| (*name, all[0])).collect();
    let clients = REGISTRY.suite_clients();
    let data_dir = std::env::temp_dir().join(format!("keel-suite-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let test_clients = format!(
        "{TEST_CLIENT_ID}:{TEST_CLIENT_SECRET}:{TEST_CLIENT_SCOPES};\
         {AUTH_RELAY_CLIENT_ID}:{AUTH_RELAY_CLIENT_SECRET}:events.deliver"
    );

    let mut members = Vec::new();
    let mut later = Vec::new();
    for ((spec, db), own) in REGISTRY.services().zip(databases).zip(listeners) {
        let mut argv = REGISTRY.suite_args(spec, &first, &clients);
        // Each peer at every replica's address, for its clients to balance over.
        for (peer, all) in addrs.iter().filter(|(peer, all)| **peer != spec.name && all.len() > 1) {
            replicas::set_flag(&mut argv, &format!("--{peer}-url"), &replicas::url(all));
        }
        argv.extend(
            [
                &format!("--{}-database-url", spec.name),
                db.url(),
                "--db-pool-size",
                "8",
                // Quick retries: tests stop and start services.
                "--relay-poll-ms",
                "200",
                "--relay-max-backoff-ms",
                "400",
            ]
            .map(str::to_owned),
        );
        if spec.name == registry::AUTH {
            argv.extend(["--service-clients", &test_clients].map(str::to_owned));
            // Tests run auth as production should: signing keys sealed.
            argv.push(format!("--key-encryption-key={}", SealingKey::generate()?.1));
        }
        argv.extend(options.args.get(spec.name).into_iter().flatten().cloned());
        let instances = addrs[spec.name]
            .iter()
            .map(|addr| {
                Ok(Instance {
                    addr: *addr,
                    channel: Channel::from_shared(format!("http://{addr}"))?.connect_lazy(),
                    running: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut member = Member {
            spec,
            channel: replicas::channel(&instances)?,
            db,
            argv,
            instances,
        };
        let mut own = own.into_iter();
        if !options.withheld.contains(&spec.name) {
            let listener = own.next().context("no listener")?;
            member.start_instance(0, listener, &clients, &data_dir)?;
            later.push((members.len(), own));
        }
        members.push(member);
    }
    let auth = members
        .iter()
        .find(|m| m.spec.name == registry::AUTH)
        .context("auth is not registered")?;
    let auth_config = AuthConfig::from_arg_matches(&REGISTRY.parse(auth.spec, &auth.argv)?)?;
    let mut suite = Suite {
        members,
        clients,
        auth_config,
        data_dir,
    };
    suite.wait_until_serving().await?;
    // The other replicas once the first of each serves: the first auth has
    // made the signing key by then, so no two replicas make one each.
    for (at, listeners) in later {
        for (i, listener) in listeners.enumerate() {
            let (clients, data_dir) = (suite.clients.clone(), suite.data_dir.clone());
            suite.members[at].start_instance(i + 1, listener, &clients, &data_dir)?;
        }
    }
    suite.wait_until_serving().await?;
    Ok(suite)
}

/// Starts the suite with notifications, which consumes auth's events, held
/// back: the events stay undelivered in auth's outbox, payloads and all, for
/// tests that read them there. `auth_args` are extra `keel serve auth` flags.
pub async fn spawn_suite_holding_events(auth_args: &[&str]) -> anyhow::Result<Suite> {
    spawn_suite_with_options(
        SuiteOptions::default()
            .args(registry::AUTH, auth_args)
            .withhold("notifications"),
    )
    .await
}

/// A suite with one signed-in user whose UserRegistered event never reaches
/// accounts: the user registers while accounts is down, and the event is then
/// marked delivered in auth's outbox. Whatever accounts knows of the user, it
/// learns on the user's first call.
pub async fn spawn_suite_with_withheld_registration() -> anyhow::Result<(Suite, pb::User, pb::TokenPair)> {
    use diesel::{ExpressionMethods as _, QueryDsl as _};
    use diesel_async::RunQueryDsl as _;
    use keel_platform::events::outbox::outbox;

    let mut suite = spawn_suite_with_options(SuiteOptions::default().withhold(keel_accounts::SERVICE.name)).await?;
    let (user, tokens) = suite.signed_in_user().await?;
    let mut auth = suite.auth_db().await?;
    let withheld = diesel::update(
        outbox::table
            .filter(outbox::published_at.is_null())
            .filter(outbox::event_type.eq("user.registered")),
    )
    .set(outbox::published_at.eq(diesel::dsl::now))
    .execute(&mut auth)
    .await?;
    anyhow::ensure!(withheld == 1, "the user's UserRegistered was not pending");
    suite.start_accounts().await?;
    Ok((suite, user, tokens))
}

/// A metrics listener on a free loopback port, and its address.
fn metrics_listener() -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a metrics port")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok((tokio::net::TcpListener::from_std(listener)?, addr))
}

impl Member {
    /// Starts replica `i` on `listener`.
    fn start_instance(
        &mut self,
        i: usize,
        listener: tokio::net::TcpListener,
        clients: &SuiteClients,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<()> {
        let name = self.spec.name;
        let instance = self
            .instances
            .get_mut(i)
            .with_context(|| format!("{name} has no replica {i}"))?;
        anyhow::ensure!(instance.running.is_none(), "replica {i} of {name} is already running");
        let shutdown = CancellationToken::new();
        let matches = REGISTRY.parse(self.spec, &self.argv)?;
        let (metrics_listener, metrics) = metrics_listener()?;
        let serve = REGISTRY.start(
            self.spec,
            Launch {
                matches,
                listener,
                shutdown: shutdown.clone(),
                suite_clients: clients.entries.clone(),
                data_dir: Some(data_dir.to_owned()),
                metrics_listener: Some(metrics_listener),
            },
        )?;
        instance.running = Some(Running::spawn(serve, shutdown, metrics));
        Ok(())
    }

    /// Waits until every running replica reports SERVING.
    async fn wait_until_serving(&self) -> anyhow::Result<()> {
        for instance in self.instances.iter().filter(|i| i.running.is_some()) {
            instance.wait_until_serving(self.spec).await?;
        }
        Ok(())
    }

    /// Stops replica `i` and waits for it to exit.
    async fn stop_instance(&mut self, i: usize) -> anyhow::Result<()> {
        let name = self.spec.name;
        let instance = self
            .instances
            .get_mut(i)
            .with_context(|| format!("{name} has no replica {i}"))?;
        if let Some(running) = instance.running.take() {
            running.shutdown.cancel();
            running.task.await.with_context(|| format!("{name} panicked"))??;
        }
        Ok(())
    }

    /// Stops every replica (the last started first) and waits for them.
    async fn stop(&mut self) -> anyhow::Result<()> {
        for i in (0..self.instances.len()).rev() {
            self.stop_instance(i).await?;
        }
        Ok(())
    }
}

impl Instance {
    async fn wait_until_serving(&self, spec: &ServiceSpec) -> anyhow::Result<()> {
        let service = spec.grpc_services.first().copied().unwrap_or_default();
        let serving =
            keel_platform::serve::server::wait_until_serving(self.channel.clone(), service, Duration::from_secs(30));
        let Some(mut failed) = self.running.as_ref().map(|running| running.failed.clone()) else {
            return serving.await;
        };
        tokio::select! {
            served = serving => served,
            Ok(failure) = failed.wait_for(Option::is_some) => {
                anyhow::bail!("{} failed to start: {}", spec.name, failure.as_deref().unwrap_or_default())
            }
        }
    }
}

impl Suite {
    fn member(&self, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.spec.name == name)
            .unwrap_or_else(|| panic!("no service {name} in the registry"))
    }

    fn member_mut(&mut self, name: &str) -> &mut Member {
        self.members
            .iter_mut()
            .find(|m| m.spec.name == name)
            .unwrap_or_else(|| panic!("no service {name} in the registry"))
    }

    /// The suite's data folder: where mail is written as `.eml` files (its
    /// `mail` folder) when notifications has no SMTP server.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// The mail written for `address` so far (notifications writes `.eml`
    /// files in the suite's data folder when it has no SMTP server), oldest
    /// first.
    pub fn mail_to(&self, address: &str) -> anyhow::Result<Vec<crate::smtp::ReceivedMail>> {
        let dir = self.data_dir.join("mail");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|e| e == "eml"))
            .collect();
        paths.sort();
        let mut mails = Vec::new();
        for path in paths {
            let data = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let mail = crate::smtp::ReceivedMail {
                from: String::new(),
                to: Vec::new(),
                data,
            };
            if mail.header("To").is_some_and(|to| to.contains(address)) {
                mails.push(mail);
            }
        }
        Ok(mails)
    }

    /// Every registered service's name, in start order.
    pub fn service_names(&self) -> Vec<&'static str> {
        self.members.iter().map(|m| m.spec.name).collect()
    }

    /// The channel to service `name` (balanced over its replicas, when it
    /// has several).
    pub fn channel(&self, name: &str) -> Channel {
        self.member(name).channel.clone()
    }

    /// Where service `name` listens (its first replica, when it has
    /// several: see [`Suite::replica_addrs`]).
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.member(name).instances[0].addr
    }

    /// Service `name`'s database.
    pub fn database_url(&self, name: &str) -> &str {
        self.member(name).db.url()
    }

    /// A connection of its own to service `name`'s database.
    pub async fn db(&self, name: &str) -> anyhow::Result<diesel_async::AsyncPgConnection> {
        use diesel_async::AsyncConnection as _;
        Ok(diesel_async::AsyncPgConnection::establish(self.database_url(name)).await?)
    }

    /// Starts service `name` (again) on its address: every replica of it
    /// that is stopped.
    pub async fn start(&mut self, name: &str) -> anyhow::Result<()> {
        let stopped: Vec<usize> = (self.member(name).instances.iter().enumerate())
            .filter(|(_, instance)| instance.running.is_none())
            .map(|(i, _)| i)
            .collect();
        anyhow::ensure!(!stopped.is_empty(), "{name} is already running");
        let mut stopped = stopped.into_iter();
        if stopped.len() == self.member(name).instances.len()
            && let Some(first) = stopped.next()
        {
            // The first alone, as the suite starts: see spawn_suite_with_options.
            self.start_instance(name, first).await?;
            self.member(name).wait_until_serving().await?;
        }
        for i in stopped {
            self.start_instance(name, i).await?;
        }
        self.member(name).wait_until_serving().await
    }

    /// Starts replica `i` of service `name` on its address, without waiting.
    async fn start_instance(&mut self, name: &str, i: usize) -> anyhow::Result<()> {
        let clients = self.clients.clone();
        let data_dir = self.data_dir.clone();
        let member = self.member_mut(name);
        let addr = member
            .instances
            .get(i)
            .with_context(|| format!("{name} has no replica {i}"))?
            .addr;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        member.start_instance(i, listener, &clients, &data_dir)
    }

    /// Waits until every running replica of every service reports SERVING.
    async fn wait_until_serving(&self) -> anyhow::Result<()> {
        for member in &self.members {
            member.wait_until_serving().await?;
        }
        Ok(())
    }

    /// Sets `flag` of service `name` to `value` (replacing the value the
    /// suite gave it, e.g. `--accounts-url` to route through a proxy). It
    /// takes effect when the service next starts, and for replicas.
    pub fn set_flag(&mut self, name: &str, flag: &str, value: &str) {
        replicas::set_flag(&mut self.member_mut(name).argv, flag, value);
    }

    /// Where running service `name` serves its Prometheus metrics
    /// (`http://…/metrics`; its first replica's, when it has several: see
    /// [`Suite::replica_metrics_urls`]).
    pub fn metrics_url(&self, name: &str) -> anyhow::Result<String> {
        self.replica_metrics_url(name, 0)
    }

    /// Stops service `name` (every replica of it) and waits for it to exit.
    pub async fn stop_service(&mut self, name: &str) -> anyhow::Result<()> {
        self.member_mut(name).stop().await
    }

    /// Stops every service (the last started first) and waits for them to
    /// exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for member in self.members.iter_mut().rev() {
            member.stop().await?;
        }
        Ok(())
    }
}

impl Drop for Suite {
    fn drop(&mut self) {
        let instances = self.members.iter_mut().flat_map(|m| &mut m.instances);
        for running in instances.filter_map(|i| i.running.take()) {
            running.shutdown.cancel();
            running.task.abort();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
