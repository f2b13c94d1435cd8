//! `keel up --replicas 2`: two of every service and two gateways on one
//! private Postgres, every one listed in the banner and answering, sign-up
//! and sign-in through each gateway, and Ctrl-C stopping it all cleanly.

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use keel_testkit::http::{HttpClient, HttpResponse};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::up::{free_port, postgres_running_in};

const SERVICES: [&str; 4] = ["auth", "accounts", "orders", "notifications"];

/// A free port whose next port is free too, for the two gateways.
fn two_free_ports() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// POSTs the JSON `body` to `path`.
async fn post(http: &HttpClient, path: &str, body: String) -> anyhow::Result<HttpResponse> {
    let json = [(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    )];
    http.send(http::Method::POST, path, None, &json, body.into()).await
}

/// The banner's rows for `name` (`auth #1`, `auth #2`, ...): each one's
/// endpoint.
fn endpoints<'a>(banner: &'a str, name: &str) -> Vec<&'a str> {
    banner
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (row, replica, endpoint) = (words.next()?, words.next()?, words.next()?);
            (row == name && replica.starts_with('#') && words.next() == Some("SERVING")).then_some(endpoint)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn up_with_two_replicas_serves_each_twice_then_stops_cleanly() -> anyhow::Result<()> {
    let data_dir = std::env::temp_dir().join(format!("keel-up-replicas-test-{}", uuid::Uuid::now_v7().simple()));
    let gateway_port = two_free_ports();
    // The first replica of each where the flags say (the others' ports are
    // the system's choice), its metrics likewise.
    let mut args = vec!["up".to_owned(), "--replicas".to_owned(), "2".to_owned()];
    let mut firsts = Vec::new();
    for name in SERVICES {
        let port = free_port();
        firsts.push((name, port));
        args.extend([format!("--{name}-listen"), format!("127.0.0.1:{port}")]);
    }
    for name in SERVICES.into_iter().chain(["gateway"]) {
        args.extend([format!("--{name}-metrics-listen"), format!("127.0.0.1:{}", free_port())]);
    }
    args.extend(["--gateway-listen".to_owned(), format!("127.0.0.1:{gateway_port}")]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(&args)
        .env("KEEL_DATA_DIR", &data_dir)
        .env_remove("KEEL_DATABASE_URL")
        .env_remove("KEEL_AUTH_DATABASE_URL")
        .env_remove("KEEL_UP_REPLICAS")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;

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
    let banner = tokio::time::timeout(Duration::from_secs(180), banner).await??;

    // Two of each service, the first where it was told, both answering.
    for (name, port) in firsts {
        let listed = endpoints(&banner, name);
        assert_eq!(listed.len(), 2, "{name}: {banner}");
        assert_eq!(listed[0], format!("grpc://127.0.0.1:{port}"), "{banner}");
        let second = listed[1].strip_prefix("grpc://").expect("a gRPC endpoint");
        assert_ne!(second.parse::<SocketAddr>()?.port(), port, "{banner}");
        let channel = tonic::transport::Channel::from_shared(format!("http://{second}"))?.connect_lazy();
        let health = HealthClient::new(channel)
            .check(HealthCheckRequest { service: String::new() })
            .await?;
        assert_eq!(health.get_ref().status(), ServingStatus::Serving, "{name} #2");
    }
    // Two gateways on consecutive ports, each ready, each signing people up
    // and in.
    let gateways = endpoints(&banner, "gateway");
    assert_eq!(
        gateways,
        [
            format!("http://127.0.0.1:{gateway_port}"),
            format!("http://127.0.0.1:{}", gateway_port + 1)
        ],
        "{banner}"
    );
    assert!(banner.contains("KEEL_AUTH_URL=http://"), "{banner}");
    assert!(postgres_running_in(&data_dir));
    for (n, gateway) in gateways.iter().enumerate() {
        let http = HttpClient::new((*gateway).to_owned());
        let ready = http.get("/readyz", None).await?;
        assert_eq!(ready.status, 200, "{gateway}: {:?}", ready.body);
        let credentials = format!(r#"{{"email":"replica-{n}@example.com","password":"correct horse battery"}}"#);
        let registered = post(&http, "/v1/auth:register", credentials.clone()).await?;
        assert_eq!(registered.status, 200, "{gateway}: {:?}", registered.body);
        let login = post(&http, "/v1/auth:login", credentials).await?;
        assert_eq!(login.status, 200, "{gateway}: {:?}", login.body);
        let token = login.json()["tokens"]["accessToken"]
            .as_str()
            .expect("an access token")
            .to_owned();
        let me = http.get("/v1/accounts/me", Some(&token)).await?;
        assert_eq!(me.status, 200, "{gateway}: {:?}", me.body);
    }

    let sigint = Command::new("kill").args(["-INT", &child.id().to_string()]).status()?;
    assert!(sigint.success());
    let sent = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "keel up did not stop within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "keel up exited with {status}");
    assert!(!postgres_running_in(&data_dir), "the private Postgres is still running");
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}
