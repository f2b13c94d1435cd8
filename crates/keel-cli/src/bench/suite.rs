//! What the comparison benches run against: every registered service started
//! in-process on scratch `keel_bench_*` databases, on a runtime of their own,
//! signed-in clients with funded accounts, and pgbench on the same Postgres.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use keel::{
    accounts::v1::{DepositRequest, GetAccountRequest, accounts_service_client::AccountsServiceClient},
    auth::v1::{IssueServiceTokenRequest, LoginRequest, RegisterRequest, auth_service_client::AuthServiceClient},
    common::v1::Money,
};
use keel_platform::{
    Role,
    auth::scopes,
    registry::{self, Launch, ServiceSpec},
};
use keel_registry::REGISTRY;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::{
    Phases,
    cpu::{self, Meter, PerTransaction},
};
use crate::database::Database;

/// The scratch database a bench gives service `spec`.
pub(super) fn bench_database(spec: &ServiceSpec) -> String {
    format!("keel_bench_{}", spec.name)
}
/// Drops every bench database (best effort: the bench's result matters more).
pub(super) async fn drop_bench_databases(server: &str) {
    for spec in REGISTRY.services() {
        let _ = keel_platform::db::drop_database(server, &bench_database(spec)).await;
    }
}

/// The database pgbench's tables live in.
const PGBENCH_DB: &str = "keel_bench_pgbench";
const CLIENT_SECRET: &str = "bench-client-secret-0123456789";
const PASSWORD: &str = "benchmark password, long enough";

/// Drops the bench's databases, pgbench's included (best effort, as
/// [`drop_bench_databases`]).
pub(super) async fn drop_scratch_databases(database: &Database) {
    if let Ok(server) = database.url("postgres") {
        drop_bench_databases(&server).await;
        let _ = keel_platform::db::drop_database(&server, PGBENCH_DB).await;
    }
}

/// Sets up pgbench and the services on `database`, prints the bench's
/// header, runs `measure`, and stops the services whatever it returned.
pub(super) async fn against_pgbench(
    database: &Database,
    name: &str,
    phases: &Phases,
    measure: impl AsyncFnOnce(&Services, &Pgbench) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let pgbench = Pgbench::create(database, phases.concurrency).await?;
    println!(
        "keel bench {name}: {} clients, {} rounds of {}s phases; pgbench scale {}",
        phases.concurrency, phases.rounds, phases.seconds, phases.concurrency
    );
    pgbench.initialize()?;

    let suite = Services::start(database).await?;
    let result = measure(&suite, &pgbench).await;
    suite.stop().await?;
    result
}

/// The pgbench client on the same server.
pub(super) struct Pgbench {
    binary: std::path::PathBuf,
    url: String,
    clients: usize,
    /// Postgres's CPU time, and pgbench's as a child of this process.
    meter: Meter,
}

/// What one pgbench phase did.
pub(super) struct PgbenchRun {
    pub(super) tps: f64,
    /// CPU time per transaction.
    pub(super) cpu: PerTransaction,
}

impl Pgbench {
    /// pgbench for `clients` on a fresh, empty database of `database`'s server.
    pub(super) async fn create(database: &Database, clients: usize) -> anyhow::Result<Self> {
        let server = database.url("postgres")?;
        keel_platform::db::drop_database(&server, PGBENCH_DB).await?;
        keel_platform::db::ensure_database(&server, PGBENCH_DB).await?;
        Self::new(
            database.url(PGBENCH_DB)?,
            clients,
            Meter::new(Some(database)).without_services(),
        )
    }

    fn new(url: String, clients: usize, meter: Meter) -> anyhow::Result<Self> {
        let binary = keel_local_postgres::find_binaries()?.join("pgbench");
        anyhow::ensure!(
            binary.is_file(),
            "pgbench was not found beside initdb ({})",
            binary.display()
        );
        Ok(Self {
            binary,
            url,
            clients: clients.max(1),
            meter,
        })
    }

    /// `pgbench -i` at scale = clients, so tpcb-like's branch rows are not a
    /// single hot spot.
    pub(super) fn initialize(&self) -> anyhow::Result<()> {
        let output = Command::new(&self.binary)
            .args(["-i", "-q", "-s", &self.clients.to_string(), &self.url])
            .output()
            .context("running pgbench -i")?;
        anyhow::ensure!(
            output.status.success(),
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// Runs pgbench for `seconds` with `extra` flags; returns its tps and
    /// the CPU time per transaction.
    pub(super) fn run(&self, extra: &[&str], seconds: u64) -> anyhow::Result<PgbenchRun> {
        let threads = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(self.clients);
        let before = self.meter.sample();
        let output = Command::new(&self.binary)
            .args(extra)
            .args([
                "-c",
                &self.clients.to_string(),
                "-j",
                &threads.to_string(),
                "-T",
                &seconds.to_string(),
                "-n",
                &self.url,
            ])
            .output()
            .context("running pgbench")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        anyhow::ensure!(
            output.status.success(),
            "pgbench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // Read once pgbench has been reaped, so its CPU time is counted.
        let usage = self.meter.sample().since(&before);
        let figure = |prefix: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(prefix))
                .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '/').next())
                .with_context(|| format!("no {prefix:?} in pgbench's output: {stdout}"))
        };
        let tps = figure("tps = ")?.parse()?;
        let transactions = figure("number of transactions actually processed: ")?.parse()?;
        Ok(PgbenchRun {
            tps,
            cpu: usage.per_transaction(transactions),
        })
    }
}

/// A Tokio runtime for what a bench measures (the services, the gateway),
/// apart from the load generator's: its threads carry a name of their own,
/// so [`cpu`] can tell their CPU time from the rest of the process.
pub(super) struct Isolated {
    /// Taken by [`Isolated::stop`]; dropped without it, shut down at once.
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
    tasks: Vec<(String, JoinHandle<anyhow::Result<()>>)>,
}

impl Isolated {
    /// A multi-threaded runtime whose workers and blocking threads are
    /// named `name` (at most 15 bytes: Linux truncates thread names).
    pub(super) fn new(name: &str) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name(name)
            // Blocking threads that exit take their CPU time with them:
            // keep them for the whole bench.
            .thread_keep_alive(Duration::from_secs(24 * 3600))
            .enable_all()
            .build()
            .with_context(|| format!("starting the {name} runtime"))?;
        Ok(Self {
            runtime: Some(runtime),
            shutdown: CancellationToken::new(),
            tasks: Vec::new(),
        })
    }

    /// What tells the tasks to stop.
    pub(super) fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    fn handle(&self) -> anyhow::Result<&tokio::runtime::Handle> {
        self.runtime
            .as_ref()
            .map(tokio::runtime::Runtime::handle)
            .context("the runtime has stopped")
    }

    /// A listener on a free loopback port, served by this runtime's I/O
    /// driver rather than the load generator's.
    pub(super) fn listener(&self) -> anyhow::Result<tokio::net::TcpListener> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let _context = self.handle()?.enter();
        Ok(tokio::net::TcpListener::from_std(listener)?)
    }

    /// Calls `start` within this runtime (what it spawns runs here) and runs
    /// the future it returns here as `what`.
    pub(super) fn spawn<F>(&mut self, what: &str, start: impl FnOnce() -> anyhow::Result<F>) -> anyhow::Result<()>
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let handle = self.handle()?.clone();
        let future = {
            let _context = handle.enter();
            start()?
        };
        self.tasks.push((what.to_owned(), handle.spawn(future)));
        Ok(())
    }

    /// Cancels the tasks, waits for each to end, then shuts the runtime
    /// down; returns the first task's error.
    pub(super) async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let mut result = Ok(());
        for (what, task) in std::mem::take(&mut self.tasks) {
            let ended = task
                .await
                .with_context(|| format!("{what} panicked"))
                .and_then(|ended| ended);
            if result.is_ok() {
                result = ended.with_context(|| format!("{what} failed"));
            }
        }
        if let Some(runtime) = self.runtime.take() {
            // Dropping a runtime blocks, which async code must not: a
            // blocking thread waits for what it still runs (pool
            // connections) to end.
            tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(10)))
                .await
                .context("shutting the runtime down")?;
        }
        result
    }
}

impl Drop for Isolated {
    /// Without [`Isolated::stop`] (an error on the way): stop at once,
    /// without blocking.
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Every registered service, in-process on scratch databases, on a runtime
/// of their own.
pub(super) struct Services {
    runtime: Isolated,
    /// The services' data folder (notifications writes its mail there as
    /// `.eml` files); removed when the bench ends.
    _scratch: tempfile::TempDir,
    /// The CPU time of the services, Postgres and the load generator.
    pub(super) meter: Meter,
    pub(super) auth: Channel,
    pub(super) accounts: Channel,
    pub(super) accounts_addr: String,
    pub(super) accounts_url: String,
    /// Auth's database, where the bench's administrator is created.
    auth_database_url: String,
    /// Where every service listens, by name.
    pub(super) addrs: BTreeMap<&'static str, SocketAddr>,
}

impl Services {
    /// Starts every registered service on fresh `keel_bench_*` databases.
    pub(super) async fn start(database: &Database) -> anyhow::Result<Self> {
        let server = database.url("postgres")?;
        let clients = REGISTRY.suite_clients();
        let mut runtime = Isolated::new(cpu::SERVICES)?;
        let mut bound = Vec::new();
        for spec in REGISTRY.services() {
            let name = bench_database(spec);
            keel_platform::db::drop_database(&server, &name).await?;
            database.prepare(&name, (spec.migrations)()).await?;
            let listener = runtime.listener()?;
            bound.push((spec, listener.local_addr()?, listener));
        }
        let addrs: BTreeMap<&'static str, SocketAddr> =
            bound.iter().map(|(spec, addr, _)| (spec.name, *addr)).collect();
        let bench_client = format!(
            "bench:{CLIENT_SECRET}:{} {}",
            scopes::ACCOUNTS_DEBIT,
            scopes::ACCOUNTS_DEPOSIT
        );
        let scratch = tempfile::Builder::new()
            .prefix("keel-bench-")
            .tempdir()
            .context("creating the bench's data folder")?;
        for (spec, _, listener) in bound {
            let mut argv = REGISTRY.suite_args(spec, &addrs, &clients);
            argv.extend([
                format!("--{}-database-url", spec.name),
                database.url(&bench_database(spec))?,
            ]);
            if spec.name == registry::AUTH {
                argv.extend(["--service-clients".to_owned(), bench_client.clone()]);
                // One user per client, all registered from this address.
                argv.extend(["--register-limit".to_owned(), "1000000".to_owned()]);
            }
            let launch = Launch {
                matches: REGISTRY.parse(spec, argv)?,
                listener,
                shutdown: runtime.shutdown(),
                suite_clients: clients.entries.clone(),
                data_dir: Some(scratch.path().to_owned()),
                metrics_listener: None,
            };
            runtime.spawn(spec.name, || REGISTRY.start(spec, launch))?;
        }
        let url = |name: &str| {
            addrs
                .get(name)
                .map(|addr| format!("http://{addr}"))
                .context("not registered")
        };
        let (auth_url, accounts_url) = (url(registry::AUTH)?, url(keel_accounts::SERVICE.name)?);
        Ok(Self {
            runtime,
            _scratch: scratch,
            meter: Meter::new(Some(database)),
            auth: Channel::from_shared(auth_url)?.connect_lazy(),
            accounts: Channel::from_shared(accounts_url.clone())?.connect_lazy(),
            accounts_addr: accounts_url,
            accounts_url: database.url(&bench_database(&keel_accounts::SERVICE))?,
            auth_database_url: database.url(&bench_database(&keel_auth::SERVICE))?,
            addrs,
        })
    }

    /// The access token of a new administrator: created straight in auth's
    /// database, as `keel admin create-user` does, then signed in.
    pub(super) async fn admin_token(&self) -> anyhow::Result<String> {
        let email = format!("bench-admin-{}@example.com", uuid::Uuid::now_v7().simple());
        crate::admin::insert_user(&self.auth_database_url, &email, PASSWORD, &[Role::Admin])
            .await
            .context("creating the bench's administrator")?;
        let login = AuthServiceClient::new(self.auth.clone())
            .login(LoginRequest {
                email,
                password: PASSWORD.into(),
            })
            .await
            .context("signing the administrator in")?
            .into_inner();
        Ok(login.tokens.context("no tokens")?.access_token)
    }

    /// One signed-in user per client, each with a funded account, and a
    /// service token for debits.
    pub(super) async fn clients(&self, count: usize) -> anyhow::Result<Vec<Client>> {
        let mut auth = AuthServiceClient::new(self.auth.clone());
        let service_token = retry(|| async {
            let mut auth = auth.clone();
            Ok(auth
                .issue_service_token(IssueServiceTokenRequest {
                    client_id: "bench".into(),
                    client_secret: CLIENT_SECRET.into(),
                    scopes: Vec::new(),
                })
                .await?
                .into_inner()
                .access_token)
        })
        .await?;
        let mut accounts = AccountsServiceClient::new(self.accounts.clone());
        let mut clients = Vec::new();
        for i in 0..count {
            let email = format!("bench-{i}-{}@example.com", uuid::Uuid::now_v7().simple());
            auth.register(RegisterRequest {
                request_id: email.clone(),
                email: email.clone(),
                password: PASSWORD.into(),
            })
            .await?;
            let login = auth
                .login(LoginRequest {
                    email,
                    password: PASSWORD.into(),
                })
                .await?
                .into_inner();
            let user = login.user.context("no user")?;
            let token = login.tokens.context("no tokens")?.access_token;
            retry(|| async {
                let mut accounts = accounts.clone();
                accounts
                    .get_account(bearer(
                        GetAccountRequest {
                            account_id: "me".into(),
                        },
                        &token,
                    )?)
                    .await?;
                Ok(())
            })
            .await?;
            accounts
                .deposit(bearer(
                    DepositRequest {
                        account_id: user.id.clone(),
                        amount: Some(usd(1_000_000_000)),
                        request_id: format!("bench-fund-{}", user.id),
                        ..Default::default()
                    },
                    &service_token,
                )?)
                .await?;
            // One connection per client, as pgbench has.
            let connection = Channel::from_shared(self.accounts_addr.clone())?.connect().await?;
            clients.push(Client {
                accounts: AccountsServiceClient::new(connection),
                account_id: user.id,
                user_token: token,
                service_token: service_token.clone(),
            });
        }
        Ok(clients)
    }

    pub(super) async fn stop(self) -> anyhow::Result<()> {
        self.runtime.stop().await
    }
}

/// One bench client: a signed-in user with a funded account and a
/// connection of its own.
#[derive(Clone)]
pub(super) struct Client {
    pub(super) accounts: AccountsServiceClient<Channel>,
    pub(super) account_id: String,
    pub(super) user_token: String,
    pub(super) service_token: String,
}

pub(super) fn usd(amount_minor: i64) -> Money {
    Money {
        amount_minor,
        currency_code: "USD".into(),
    }
}

pub(super) fn bearer<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

/// Retries `call` for up to 30 s: the services may still be starting.
pub(super) async fn retry<T, F, Fut>(mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() < deadline => {
                tracing::debug!(error = format!("{err:#}"), "waiting for the services");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err),
        }
    }
}
