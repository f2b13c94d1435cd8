//! Two replicas of every service and two gateways on one set of databases:
//! each client balances its calls over a service's replicas, so every
//! replica does some of the work; one replica stopping costs at most the
//! calls made before its peers' health checks notice, and once restarted it
//! gets calls again. With NATS (the server KEEL_TEST_NATS_SERVER names; the
//! test is ignored by a plain `cargo test`: `cargo test -- --ignored nats`),
//! the replicas of a consumer share its durable consumer, so each event is
//! applied once.

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use http::StatusCode;
use keel_testkit::{
    SuiteOptions,
    http::{HttpClient, TestGateway},
    metrics::scrape,
    nats::NatsTest,
    spawn_suite_with_options,
};
use serde_json::json;
use tokio::time::Instant;

const REQUESTS: &str = "keel_rpc_requests_total";
const PASSWORD: &str = "a perfectly fine password";

/// How often a client health-checks each replica (KEEL_CLIENT_HEALTH_INTERVAL_MS
/// by default, which the gateways use): a stopped replica gets no more calls
/// once a check has failed.
fn health_interval() -> Duration {
    Duration::from_millis(keel_platform::client::ClientConfig::default().client_health_interval_ms)
}

/// How long after a replica has stopped a call may still fail: a health
/// interval, and as long again for the check in flight and a loaded machine.
fn failover_bound() -> Duration {
    health_interval() * 2
}

/// One call of the load: when it started and ended, and what it answered.
type Outcome = (Instant, Instant, Result<StatusCode, String>);

/// `name`'s calls to `method` that answered OK, as replica `url` counted them.
async fn served(url: &str, name: &str, method: &str) -> anyhow::Result<f64> {
    let scrape = scrape(url).await?;
    Ok(scrape.value(REQUESTS, &[("service", name), ("method", method), ("code", "OK")]))
}

/// Registers a new user through `http` and logs them in; their access token
/// and account id.
async fn signed_up(http: &HttpClient) -> anyhow::Result<(String, String)> {
    let email = format!("replicas-{}@example.com", uuid::Uuid::now_v7().simple());
    let credentials = json!({ "email": email, "password": PASSWORD });
    let registered = http.post("/v1/auth:register", None, &credentials).await?;
    anyhow::ensure!(registered.status == StatusCode::OK, "register: {:?}", registered.body);
    let login = http.post("/v1/auth:login", None, &credentials).await?;
    anyhow::ensure!(login.status == StatusCode::OK, "login: {:?}", login.body);
    let token = login.json()["tokens"]["accessToken"]
        .as_str()
        .expect("an access token")
        .to_owned();
    let me = http.get("/v1/accounts/me", Some(&token)).await?;
    anyhow::ensure!(me.status == StatusCode::OK, "accounts/me: {:?}", me.body);
    let account = me.json()["account"]["id"].as_str().expect("an account id").to_owned();
    Ok((token, account))
}

/// Deposits one cent into `account` through `http`, as `admin`.
async fn deposit(http: &HttpClient, admin: &str, account: &str) -> anyhow::Result<StatusCode> {
    let body = json!({
        "amount": { "amountMinor": "1", "currencyCode": "USD" },
        "requestId": uuid::Uuid::now_v7().to_string(),
    });
    Ok(http
        .post(&format!("/v1/accounts/{account}:deposit"), Some(admin), &body)
        .await?
        .status)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_the_work_and_survive_one_stopping() -> anyhow::Result<()> {
    let mut suite = spawn_suite_with_options(SuiteOptions::default().replicas(2)).await?;
    assert_eq!(suite.replicas(), 2);
    for name in suite.service_names() {
        let addrs = suite.replica_addrs(name);
        assert_eq!(addrs.len(), 2, "{name}");
        assert_ne!(addrs[0], addrs[1], "{name}");
        assert_eq!(suite.url(name), format!("http://{},http://{}", addrs[0], addrs[1]));
    }
    // The admin's deposits below would trip the per-client rate limit.
    let gateways = suite.spawn_gateways(2, &["--rate-limit-per-minute", "0"]).await?;
    let (_, admin) = suite.signed_in_admin().await?;

    // Sign-ups, logins and deposits through both gateways.
    let mut accounts = Vec::new();
    for _ in 0..6 {
        for gateway in &gateways {
            let (_, account) = signed_up(gateway.http()).await?;
            assert_eq!(
                deposit(gateway.http(), &admin.access_token, &account).await?,
                StatusCode::OK
            );
            accounts.push(account);
        }
    }
    // Each replica did some of each service's work, in its own metrics.
    for (name, method) in [
        ("auth", "AuthService/Register"),
        ("auth", "AuthService/Login"),
        ("accounts", "AccountsService/Deposit"),
        ("accounts", "AccountsService/GetAccount"),
    ] {
        for (i, url) in suite.replica_metrics_urls(name)?.iter().enumerate() {
            let count = served(url, name, method).await?;
            assert!(count > 0.0, "replica {i} of {name} served no {method}");
        }
    }

    // Deposits through both gateways, without a pause, while one accounts
    // replica stops.
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let load: Vec<_> = gateways
        .iter()
        .map(TestGateway::http)
        .enumerate()
        .map(|(at, http)| {
            let (http, admin) = (http.clone(), admin.access_token.clone());
            let (account, outcomes, stop) = (accounts[at].clone(), outcomes.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let started = Instant::now();
                    let result = deposit(&http, &admin, &account).await.map_err(|err| format!("{err:#}"));
                    outcomes
                        .lock()
                        .expect("outcomes")
                        .push((started, Instant::now(), result));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = Instant::now();
    suite.stop_replica("accounts", 1).await?;
    let stopped = Instant::now();
    assert!(suite.replica_metrics_url("accounts", 1).is_err());
    tokio::time::sleep(failover_bound() + Duration::from_secs(2)).await;
    stop.cancel();
    for task in load {
        task.await?;
    }

    let outcomes = outcomes.lock().expect("outcomes").clone();
    let ok = |result: &Result<StatusCode, String>| matches!(result, Ok(StatusCode::OK));
    // Every call over before the stop succeeded, and every call started once
    // the clients' health checks have had their time; the calls in flight at
    // the stop, and those the stopping replica was given until the checks
    // noticed, may fail.
    let bound = stopped + failover_bound();
    let failed_outside: Vec<_> = outcomes
        .iter()
        .filter(|(started, ended, result)| (*ended < stopping || *started > bound) && !ok(result))
        .collect();
    assert!(
        failed_outside.is_empty(),
        "calls failed outside the failover bound ({:?} after the stop, which took {:?}): {failed_outside:?}",
        failover_bound(),
        stopped - stopping
    );
    let after = outcomes.iter().filter(|(started, _, _)| *started > bound).count();
    assert!(after >= 10, "only {after} calls after the failover bound");
    let failures: Vec<_> = outcomes.iter().filter(|(_, _, result)| !ok(result)).collect();
    let last = failures
        .iter()
        .map(|(started, _, _)| started.saturating_duration_since(stopped))
        .max();
    eprintln!(
        "{} deposits while a replica stopped (in {:?}): {} failed, the last started {last:?} after it had stopped \
         (health checks every {:?}); first failure: {:?}",
        outcomes.len(),
        stopped - stopping,
        failures.len(),
        health_interval(),
        failures.first().map(|(_, _, result)| result),
    );

    // Restarted, it serves again: the clients' health checks let it back in.
    suite.start_replica("accounts", 1).await?;
    let url = suite.replica_metrics_url("accounts", 1)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    for round in 0.. {
        for (at, gateway) in gateways.iter().enumerate() {
            assert_eq!(
                deposit(gateway.http(), &admin.access_token, &accounts[at]).await?,
                StatusCode::OK,
                "deposit {round} after the restart"
            );
        }
        if served(&url, "accounts", "AccountsService/Deposit").await? > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted replica got no deposit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for gateway in gateways {
        gateway.stop().await?;
    }
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a nats-server with JetStream: KEEL_TEST_NATS_SERVER"]
async fn two_replicas_on_nats_apply_each_event_once() -> anyhow::Result<()> {
    let Some(url) = keel_testkit::nats::server("two_replicas_on_nats_apply_each_event_once") else {
        return Ok(());
    };
    let nats = NatsTest::new(url)?;
    let suite = spawn_suite_with_options(nats.suite_options(SuiteOptions::default().replicas(2))).await?;
    const USERS: usize = 8;
    for n in 0..USERS {
        let email = format!("nats-replicas-{n}-{}@example.com", uuid::Uuid::now_v7().simple());
        suite.register(&email, PASSWORD).await?;
    }
    // Between them, accounts' replicas apply each UserRegistered once.
    let applied = [("consumer", "accounts"), ("event_type", "user.registered")];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut outcomes = [0.0; 2];
        for url in suite.replica_metrics_urls("accounts")? {
            let scrape = scrape(&url).await?;
            let of = |outcome| {
                let labels = [applied[0], applied[1], ("outcome", outcome)];
                scrape.value("keel_events_received_total", &labels)
            };
            outcomes[0] += of("applied");
            outcomes[1] += of("duplicate");
        }
        if outcomes[0] >= USERS as f64 {
            assert_eq!(outcomes, [USERS as f64, 0.0], "applied, duplicate");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 30 s accounts' replicas had applied {} of {USERS} registrations",
            outcomes[0]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    suite.stop().await?;
    nats.cleanup().await
}
