//! `keel bench login`: sign-in against the raw password-hashing rate.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{PasswordHasher as _, PasswordVerifier as _},
};
use clap::Args;
use keel::auth::v1::{GetJwksRequest, LoginRequest, RegisterRequest, auth_service_client::AuthServiceClient};
use keel_auth::password::HashCost;
use keel_platform::registry::Launch;
use keel_registry::REGISTRY;
use tonic::transport::Channel;

use super::{
    cpu::{self, Medians, Meter, Micros, PerRequest},
    harness, suite,
};
use crate::database::DatabaseArgs;

/// `keel bench login`.
#[derive(Debug, Args)]
pub struct LoginBench {
    /// How long each phase runs (seconds).
    #[arg(long, default_value_t = 4)]
    seconds: u64,

    /// Rounds of (raw verify, Login) phases. Rounds alternate the two so a
    /// noisy neighbour hurts both alike; the summary takes the median.
    #[arg(long, default_value_t = 5)]
    rounds: usize,

    /// Concurrent Login callers (default: four per CPU, enough to keep every
    /// hashing slot busy).
    #[arg(long)]
    concurrency: Option<usize>,

    /// An auth service that is already running (e.g. http://127.0.0.1:50051);
    /// unset, the bench starts one in-process on a scratch database.
    #[arg(long)]
    target: Option<String>,

    #[command(flatten)]
    database: DatabaseArgs,
}

const BENCH_DATABASE: &str = "keel_bench_auth";
const PASSWORD: &str = "benchmark password, long enough";

impl LoginBench {
    /// Runs the bench.
    pub async fn run(self) -> anyhow::Result<()> {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let concurrency = self.concurrency.unwrap_or(cpus * 4);
        let phase = Duration::from_secs(self.seconds);
        let cost = HashCost::default();

        println!(
            "keel bench login: {cpus} CPUs, {} rounds of {}s raw argon2id verify + {}s Login",
            self.rounds, self.seconds, self.seconds
        );
        let plan = Plan {
            cost,
            cpus,
            concurrency,
            phase,
            rounds: self.rounds.max(1),
        };
        match &self.target {
            Some(target) => {
                let channel = Channel::from_shared(target.clone())?.connect().await?;
                // Auth and its Postgres run elsewhere: only this process is ours to read.
                measure_login(channel, plan, Meter::new(None).without_services()).await
            }
            None => {
                let database = self.database.open().await?;
                let meter = Meter::new(Some(&database));
                let result = with_scratch_auth(&database, |channel| measure_login(channel, plan, meter)).await;
                database.close();
                result
            }
        }
    }
}

/// What `keel bench login` runs.
#[derive(Debug, Clone, Copy)]
struct Plan {
    cost: HashCost,
    cpus: usize,
    concurrency: usize,
    phase: Duration,
    rounds: usize,
}

/// What the raw verify phase did.
struct RawVerify {
    per_second: f64,
    /// CPU time per verification, in µs, on the verifying threads.
    cpu: Option<f64>,
}

/// Verifies one hash on `threads` OS threads for `phase`.
async fn raw_verify_rate(cost: HashCost, threads: usize, phase: Duration) -> anyhow::Result<RawVerify> {
    tokio::task::spawn_blocking(move || {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|err| anyhow::anyhow!("argon2 parameters: {err}"))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let hash = argon2
            .hash_password(PASSWORD.as_bytes())
            .map_err(|err| anyhow::anyhow!("hashing: {err}"))?
            .to_string();
        let done = AtomicU64::new(0);
        let start = Instant::now();
        let verify = || {
            let before = cpu::this_thread();
            while start.elapsed() < phase {
                if argon2.verify_password(PASSWORD.as_bytes(), hash.as_str()).is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            // The thread ends with the phase, and its CPU time with it: it
            // reads its own first.
            Some(cpu::this_thread()?.saturating_sub(before?))
        };
        let spent = std::thread::scope(|scope| {
            let verifiers = (0..threads)
                .map(|_| {
                    std::thread::Builder::new()
                        .name("bench-verify".to_owned())
                        .spawn_scoped(scope, verify)
                })
                .collect::<std::io::Result<Vec<_>>>()
                .context("starting a verifying thread")?;
            let mut spent = Some(Duration::ZERO);
            for verifier in verifiers {
                let own = verifier
                    .join()
                    .map_err(|_| anyhow::anyhow!("a verifying thread panicked"))?;
                spent = spent.zip(own).map(|(total, own)| total + own);
            }
            anyhow::Ok(spent)
        })?;
        let (elapsed, done) = (start.elapsed(), done.load(Ordering::Relaxed));
        Ok(RawVerify {
            per_second: done as f64 / elapsed.as_secs_f64(),
            cpu: spent.and_then(|spent| (done > 0).then(|| spent.as_secs_f64() * 1e6 / done as f64)),
        })
    })
    .await?
}

/// Runs `work` against an auth service started in-process on a scratch
/// database that is dropped afterwards.
async fn with_scratch_auth<F, Fut>(database: &crate::database::Database, work: F) -> anyhow::Result<()>
where
    F: FnOnce(Channel) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let server = database.url("postgres")?;
    keel_platform::db::drop_database(&server, BENCH_DATABASE).await?;
    database.prepare(BENCH_DATABASE, keel_auth::MIGRATIONS).await?;
    // Generous failure limits: the bench's own failed-login probe must not lock
    // itself out, and its concurrent logins of one account (each counted until
    // its hash is done) must not slow that account down.
    let matches = REGISTRY.parse(
        &keel_auth::SERVICE,
        [
            "keel".to_owned(),
            "--auth-database-url".to_owned(),
            database.url(BENCH_DATABASE)?,
            "--login-max-failures".to_owned(),
            "1000000".to_owned(),
            "--login-max-address-failures".to_owned(),
            "1000000".to_owned(),
            "--login-slowdown-after".to_owned(),
            "1000000".to_owned(),
        ],
    )?;
    // Auth runs on a runtime of its own, apart from the load generator's,
    // so its CPU time can be told apart (its hashing threads are its own).
    let mut runtime = suite::Isolated::new(cpu::SERVICES)?;
    let listener = runtime.listener()?;
    let addr = listener.local_addr()?;
    let launch = Launch {
        matches,
        listener,
        shutdown: runtime.shutdown(),
        suite_clients: Vec::new(),
        data_dir: None,
        metrics_listener: None,
    };
    runtime.spawn("auth", || REGISTRY.start(&keel_auth::SERVICE, launch))?;
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect_lazy();
    let result = work(channel).await;
    runtime.stop().await?;
    keel_platform::db::drop_database(&server, BENCH_DATABASE).await?;
    result
}

async fn measure_login(channel: Channel, plan: Plan, meter: Meter) -> anyhow::Result<()> {
    let email = register_bench_user(&channel).await?;
    let mut ratios = Vec::new();
    let mut latencies = Vec::new();
    let mut failures = 0;
    let (mut raw_cpu, mut login_cpu) = (Vec::new(), Medians::default());
    for round in 1..=plan.rounds {
        let raw = raw_verify_rate(plan.cost, plan.cpus, plan.phase).await?;
        println!(
            "  round {round}: raw verify {:.1}/s; hashing threads {}",
            raw.per_second,
            Micros(raw.cpu, "verify")
        );
        let login = login_phase(&channel, &email, plan, &meter).await?;
        println!(
            "  round {round}: Login {:.1}/s -> {:.2}; {}",
            login.rate,
            login.rate / raw.per_second,
            login.cpu
        );
        ratios.push(login.rate / raw.per_second);
        raw_cpu.push(raw.cpu);
        login_cpu.push_request(&login.cpu);
        latencies.extend(login.latencies);
        failures += login.failures;
    }

    let median_ratio = harness::median(&mut ratios);
    latencies.sort();
    let percentile = |p: f64| harness::percentile_ms(&latencies, p);
    let cost = plan.cost;
    println!(
        "Login throughput / raw argon2id verify rate (m={} KiB, t={}, p={}, {} threads; {} callers): median {:.2} \
         (target >= 0.90); {failures} failed calls; median CPU: {} vs raw verify's {}",
        cost.memory_kib,
        cost.iterations,
        cost.parallelism,
        plan.cpus,
        plan.concurrency,
        median_ratio,
        login_cpu.requests(),
        Micros(cpu::median_of(&raw_cpu), "verify")
    );
    println!(
        "GetJwks while Login is saturated (n={}): p50 {:.2} ms, p99 {:.2} ms (target < 10 ms), max {:.2} ms",
        latencies.len(),
        percentile(0.50),
        percentile(0.99),
        percentile(1.0)
    );
    match failed_login_latency(&channel, &email).await? {
        Some((unknown, wrong)) => println!(
            "Failed Login, one caller (median of {FAILED_LOGIN_SAMPLES} each): unknown email {:.1} ms, wrong password {:.1} ms \
             (ratio {:.2}; about 1 means an unknown email is indistinguishable)",
            harness::ms(unknown),
            harness::ms(wrong),
            unknown.as_secs_f64() / wrong.as_secs_f64()
        ),
        None => println!(
            "Failed Login: not measured, the server throttles this address's failed logins \
             (RESOURCE_EXHAUSTED, as its KEEL_LOGIN_MAX_ADDRESS_FAILURES says); without --target the bench's own auth allows them"
        ),
    }
    Ok(())
}

const FAILED_LOGIN_SAMPLES: usize = 20;

/// Median latency of failed logins with an unknown email and with a wrong
/// password, alternating so drift hurts both alike. Each attempt uses a fresh
/// email so the per-account lock never kicks in; a server with the default
/// per-address limit will lock this client, so the in-process server allows
/// more failures. None when the server throttles them anyway.
async fn failed_login_latency(channel: &Channel, email: &str) -> anyhow::Result<Option<(Duration, Duration)>> {
    let mut client = AuthServiceClient::new(channel.clone());
    let wrong_email = format!("wrong-{email}");
    client
        .register(RegisterRequest {
            request_id: wrong_email.clone(),
            email: wrong_email.clone(),
            password: PASSWORD.into(),
        })
        .await
        .context("registering the wrong-password user")?;
    let mut attempt = async |email: String, password: &str| {
        let started = Instant::now();
        let refused = client
            .login(LoginRequest {
                email,
                password: password.into(),
            })
            .await;
        match refused {
            Err(status) if status.code() == tonic::Code::Unauthenticated => Ok(Some(started.elapsed())),
            Err(status) if status.code() == tonic::Code::ResourceExhausted => Ok(None),
            other => Err(anyhow::anyhow!("expected UNAUTHENTICATED, got {other:?}")),
        }
    };
    let (mut unknown, mut wrong) = (Vec::new(), Vec::new());
    for i in 0..FAILED_LOGIN_SAMPLES {
        let (Some(nobody), Some(mistaken)) = (
            attempt(format!("nobody-{i}-{email}"), PASSWORD).await?,
            attempt(wrong_email.clone(), "not the password at all").await?,
        ) else {
            return Ok(None);
        };
        unknown.push(nobody);
        wrong.push(mistaken);
    }
    unknown.sort();
    wrong.sort();
    Ok(Some((
        unknown[FAILED_LOGIN_SAMPLES / 2],
        wrong[FAILED_LOGIN_SAMPLES / 2],
    )))
}

async fn register_bench_user(channel: &Channel) -> anyhow::Result<String> {
    let email = format!("bench-{}@example.com", uuid::Uuid::now_v7().simple());
    suite::retry(|| async {
        let mut client = AuthServiceClient::new(channel.clone());
        let request = RegisterRequest {
            request_id: email.clone(),
            email: email.clone(),
            password: PASSWORD.into(),
        };
        client.register(request).await.context("registering the bench user")?;
        Ok(())
    })
    .await?;
    Ok(email)
}

struct LoginPhase {
    rate: f64,
    failures: u64,
    latencies: Vec<Duration>,
    /// CPU time per Login (the GetJwks probes' share included: small).
    cpu: PerRequest,
}

/// Saturates Login for one phase while probing GetJwks every 10 ms.
async fn login_phase(channel: &Channel, email: &str, plan: Plan, meter: &Meter) -> anyhow::Result<LoginPhase> {
    let stop = Arc::new(AtomicBool::new(false));
    let logins = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for _ in 0..plan.concurrency {
        let (mut client, stop, logins, failures, email) = (
            AuthServiceClient::new(channel.clone()),
            stop.clone(),
            logins.clone(),
            failures.clone(),
            email.to_owned(),
        );
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let request = LoginRequest {
                    email: email.clone(),
                    password: PASSWORD.into(),
                };
                match client.login(request).await {
                    Ok(_) => logins.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    // Let the callers fill every hashing slot before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (start_count, start_failures) = (logins.load(Ordering::Relaxed), failures.load(Ordering::Relaxed));
    let (start, started_at, before) = (Instant::now(), std::time::SystemTime::now(), meter.sample());
    let mut latencies = Vec::new();
    let mut probe = AuthServiceClient::new(channel.clone());
    while start.elapsed() < plan.phase {
        let sent = Instant::now();
        probe
            .get_jwks(GetJwksRequest {})
            .await
            .context("GetJwks failed under load")?;
        latencies.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let usage = meter.sample().since(&before);
    super::cpu::log_phase("Login", started_at, std::time::SystemTime::now());
    let done = logins.load(Ordering::Relaxed) - start_count;
    let rate = done as f64 / start.elapsed().as_secs_f64();
    let calls = done + (failures.load(Ordering::Relaxed) - start_failures);
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await?;
    }
    Ok(LoginPhase {
        rate,
        failures: failures.load(Ordering::Relaxed),
        latencies,
        cpu: usage.per_request(calls),
    })
}
