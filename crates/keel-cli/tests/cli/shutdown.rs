//! SIGTERM under load, as Kubernetes sends it: `keel serve auth` reports
//! NOT_SERVING, keeps serving through the shutdown delay, drains, and exits 0;
//! no call that started before NOT_SERVING was visible fails.

use std::{
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use keel::auth::v1::{LoginRequest, RegisterRequest, auth_service_client::AuthServiceClient};
use keel_testkit::{TestDatabase, suite::schema};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

const PASSWORD: &str = "a perfectly fine password";

/// One call of the load: when it started, and whether it succeeded.
type Outcome = (Instant, Result<(), tonic::Status>);

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_fails_no_call_accepted_before_not_serving() -> anyhow::Result<()> {
    let database = TestDatabase::create(schema(&keel_auth::SERVICE)).await?;
    let port = keel_testkit::ports::free_port()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["serve", "auth"])
        .env("KEEL_AUTH_LISTEN", format!("127.0.0.1:{port}"))
        .env("KEEL_AUTH_DATABASE_URL", database.url())
        .env("KEEL_SHUTDOWN_DELAY_MS", "1000")
        .env("KEEL_SHUTDOWN_GRACE_SECS", "20")
        .env("RUST_LOG", "warn")
        // Concurrent logins of one account would otherwise trip its throttle.
        .env("KEEL_LOGIN_MAX_FAILURES", "1000000")
        .env("KEEL_LOGIN_MAX_ADDRESS_FAILURES", "1000000")
        .env("KEEL_LOGIN_SLOWDOWN_AFTER", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))?.connect_lazy();
    keel_platform::serve::server::wait_until_serving(channel.clone(), keel_auth::SERVICE_NAME, Duration::from_secs(60))
        .await?;

    let mut auth = AuthServiceClient::new(channel.clone());
    auth.register(RegisterRequest {
        request_id: "load".into(),
        email: "load@example.com".into(),
        password: PASSWORD.into(),
    })
    .await?;

    // Logins (a password hash and a session row each) from 16 clients, each on
    // a connection of its own, until the server is gone.
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut clients = Vec::new();
    for _ in 0..16 {
        let connection = Channel::from_shared(format!("http://127.0.0.1:{port}"))?
            .connect()
            .await?;
        let (outcomes, stop) = (outcomes.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut auth = AuthServiceClient::new(connection);
            while !stop.is_cancelled() {
                let started = Instant::now();
                let result = auth
                    .login(LoginRequest {
                        email: "load@example.com".into(),
                        password: PASSWORD.into(),
                    })
                    .await
                    .map(|_| ());
                let failed = result.is_err();
                outcomes.lock().expect("outcomes").push((started, result));
                if failed {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    assert!(term.success());
    // When NOT_SERVING became visible, on a connection of its own.
    let mut health = HealthClient::new(
        Channel::from_shared(format!("http://127.0.0.1:{port}"))?
            .connect()
            .await?,
    );
    let not_serving = loop {
        let status = health
            .check(HealthCheckRequest {
                service: keel_auth::SERVICE_NAME.into(),
            })
            .await
            .map(|r| r.into_inner().status)
            .ok();
        if status != Some(ServingStatus::Serving as i32) {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Load goes on through the delay and the drain, until the process exits.
    let exited = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.cancel();
    for client in clients {
        client.await?;
    }
    assert!(exited.success(), "keel serve auth exited with {exited}");

    let outcomes = outcomes.lock().expect("outcomes");
    let before: Vec<&Outcome> = outcomes.iter().filter(|(started, _)| *started < not_serving).collect();
    let failed: Vec<(tonic::Code, &str)> = before
        .iter()
        .filter_map(|(_, result)| result.as_ref().err())
        .map(|status| (status.code(), status.message()))
        .collect();
    assert!(
        before.len() >= 16,
        "too little load to mean anything: {} calls",
        before.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} calls started before NOT_SERVING failed: {failed:?}",
        failed.len(),
        before.len()
    );
    // Calls kept succeeding after NOT_SERVING, through the shutdown delay.
    let served_after = outcomes
        .iter()
        .filter(|(started, result)| *started >= not_serving && result.is_ok())
        .count();
    assert!(served_after > 0, "nothing was served during the shutdown delay");
    println!(
        "{} calls started before NOT_SERVING, none failed; {served_after} more served after it; {} in all",
        before.len(),
        outcomes.len()
    );
    Ok(())
}
