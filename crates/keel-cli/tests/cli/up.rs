//! `keel up` as a user runs it: a private Postgres, the services SERVING, the
//! gateway answering, and Ctrl-C stopping everything cleanly.

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use keel::{
    accounts::v1::{GetAccountRequest, accounts_service_client::AccountsServiceClient},
    auth::v1::{GetJwksRequest, LoginRequest, RegisterRequest, auth_service_client::AuthServiceClient},
};

pub(crate) fn free_port() -> u16 {
    keel_testkit::ports::free_port().expect("a free port")
}

pub(crate) fn postgres_running_in(dir: &std::path::Path) -> bool {
    let out = Command::new("pgrep").args(["-f", &dir.display().to_string()]).output();
    matches!(out, Ok(out) if out.status.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn up_serves_then_stops_cleanly_on_sigint() -> anyhow::Result<()> {
    let data_dir = std::env::temp_dir().join(format!("keel-up-test-{}", uuid::Uuid::now_v7().simple()));
    let (port, accounts_port, gateway_port) = (free_port(), free_port(), free_port());
    let (orders_port, notifications_port) = (free_port(), free_port());
    // Each service's and the gateway's metrics listener, by name.
    let metrics: Vec<(&str, u16)> = ["auth", "accounts", "orders", "notifications", "gateway"]
        .into_iter()
        .map(|name| (name, free_port()))
        .collect();
    let metrics_args: Vec<String> = metrics
        .iter()
        .flat_map(|(name, port)| [format!("--{name}-metrics-listen"), format!("127.0.0.1:{port}")])
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "up",
            "--notifications-listen",
            &format!("127.0.0.1:{notifications_port}"),
            "--auth-listen",
            &format!("127.0.0.1:{port}"),
            "--accounts-listen",
            &format!("127.0.0.1:{accounts_port}"),
            "--orders-listen",
            &format!("127.0.0.1:{orders_port}"),
            "--gateway-listen",
            &format!("127.0.0.1:{gateway_port}"),
        ])
        .args(&metrics_args)
        .env("KEEL_DATA_DIR", &data_dir)
        .env_remove("KEEL_DATABASE_URL")
        .env_remove("KEEL_AUTH_DATABASE_URL")
        .env_remove("KEEL_GATEWAY_DOCS")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;

    // Wait for the banner.
    let stdout = child.stdout.take().expect("stdout");
    let banner = tokio::task::spawn_blocking(move || {
        let mut seen = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("Ctrl-C stops everything") {
                break;
            }
        }
        seen
    });
    let banner = tokio::time::timeout(Duration::from_secs(120), banner).await??;
    assert!(banner.contains("SERVING"), "{banner}");
    assert!(banner.contains(&format!("grpc://127.0.0.1:{port}")), "{banner}");
    assert!(
        banner.contains(&format!("grpc://127.0.0.1:{accounts_port}")),
        "{banner}"
    );
    assert!(banner.contains(&format!("grpc://127.0.0.1:{orders_port}")), "{banner}");
    assert!(banner.contains(&format!("http://127.0.0.1:{gateway_port}")), "{banner}");
    for (name, port) in &metrics {
        let url = format!("http://127.0.0.1:{port}/metrics");
        assert!(banner.contains(&url), "the banner names {name}'s metrics: {banner}");
    }
    assert!(
        banner.contains(&data_dir.display().to_string()),
        "the banner says where the data lives: {banner}"
    );
    assert!(postgres_running_in(&data_dir));

    let mut auth = AuthServiceClient::connect(format!("http://127.0.0.1:{port}")).await?;
    assert_eq!(auth.get_jwks(GetJwksRequest {}).await?.into_inner().keys.len(), 1);

    // A user registered through auth can read their own account at once.
    auth.register(RegisterRequest {
        request_id: "up-test".into(),
        email: "up@example.com".into(),
        password: "correct horse battery".into(),
    })
    .await?;
    let tokens = auth
        .login(LoginRequest {
            email: "up@example.com".into(),
            password: "correct horse battery".into(),
        })
        .await?
        .into_inner()
        .tokens
        .expect("tokens");
    let mut accounts = AccountsServiceClient::connect(format!("http://127.0.0.1:{accounts_port}")).await?;
    let mut request = tonic::Request::new(GetAccountRequest {
        account_id: "me".into(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {}", tokens.access_token).parse()?);
    let account = accounts
        .get_account(request)
        .await?
        .into_inner()
        .account
        .expect("an account");
    assert!(!account.id.is_empty());

    // The same account through the gateway, and the gateway's own endpoints.
    let http = keel_testkit::http::HttpClient::new(format!("http://127.0.0.1:{gateway_port}"));
    let me = http.get("/v1/accounts/me", Some(&tokens.access_token)).await?;
    assert_eq!(me.status, 200, "{:?}", me.body);
    assert_eq!(me.json()["account"]["id"], account.id.as_str());
    assert_eq!(http.get("/readyz", None).await?.status, 200);
    assert_eq!(http.get("/openapi.json", None).await?.json()["openapi"], "3.1.0");
    // The API reference is on under keel up, and the banner names it.
    assert!(
        banner.contains(&format!("Docs:     http://127.0.0.1:{gateway_port}/docs")),
        "{banner}"
    );
    assert_eq!(http.get("/docs", None).await?.status, 200);

    // Each metrics address shows the RED series of what was just done.
    let scrape = |name: &str| {
        let port = metrics.iter().find(|(n, _)| *n == name).map_or(0, |(_, port)| *port);
        format!("http://127.0.0.1:{port}/metrics")
    };
    let auth_metrics = keel_testkit::metrics::scrape(&scrape("auth")).await?;
    let registered = [("service", "auth"), ("method", "AuthService/Register"), ("code", "OK")];
    assert_eq!(
        auth_metrics.value("keel_rpc_requests_total", &registered),
        1.0,
        "{}",
        auth_metrics.text
    );
    let accounts_metrics = keel_testkit::metrics::scrape(&scrape("accounts")).await?;
    let read = [("method", "AccountsService/GetAccount"), ("code", "OK")];
    assert_eq!(
        accounts_metrics.value("keel_rpc_requests_total", &read),
        2.0,
        "{}",
        accounts_metrics.text
    );
    let gateway_metrics = keel_testkit::metrics::scrape(&scrape("gateway")).await?;
    let me = [
        ("route", "/v1/accounts/{account_id}"),
        ("method", "GET"),
        ("status", "200"),
    ];
    assert_eq!(
        gateway_metrics.value("keel_http_requests_total", &me),
        1.0,
        "{}",
        gateway_metrics.text
    );
    // keel up itself asked each for its health before the banner.
    for name in ["orders", "notifications"] {
        let service = keel_testkit::metrics::scrape(&scrape(name)).await?;
        let checked = [("service", name), ("method", "Health/Check"), ("code", "OK")];
        assert!(
            service.value("keel_rpc_requests_total", &checked) >= 1.0,
            "{name}: {}",
            service.text
        );
    }

    let sigint = Command::new("kill").args(["-INT", &child.id().to_string()]).status()?;
    assert!(sigint.success());
    let sent = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "keel up did not stop within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "keel up exited with {status}");
    assert!(!postgres_running_in(&data_dir), "the private Postgres is still running");
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}
