//! Health that tells the truth about the database: NOT_SERVING within a
//! second of Postgres going away, SERVING again once it is back, and no
//! flapping afterwards. The service runs against a cluster of its own, so
//! stopping it disturbs no other test.

use std::time::Duration;

use keel_local_postgres::{Durability, LocalPostgres};
use keel_platform::{
    db,
    registry::{self, Launch},
};
use keel_registry::REGISTRY;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// Polls health every 20 ms until it reports `wanted`, for at most `within`.
async fn until_status(
    health: &mut HealthClient<tonic::transport::Channel>,
    wanted: ServingStatus,
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: keel_auth::SERVICE_NAME.into(),
            })
            .await?
            .into_inner()
            .status;
        if status == wanted as i32 {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(started.elapsed() < within, "not {wanted:?} within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_follows_the_database_down_and_back_without_flapping() -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("keel-readiness-{}", uuid::Uuid::now_v7().simple()));
    let cluster = {
        let root = root.clone();
        std::sync::Arc::new(
            tokio::task::spawn_blocking(move || LocalPostgres::start(&root, Durability::Ephemeral)).await??,
        )
    };
    let server = cluster.url("postgres");
    db::ensure_database(&server, keel_auth::DATABASE).await?;
    let url = db::with_database(&server, keel_auth::DATABASE)?;

    let spec = REGISTRY.get(registry::AUTH).expect("auth is registered");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let matches = REGISTRY.parse(spec, ["keel".to_owned(), format!("--auth-database-url={url}")])?;
    let serve = REGISTRY.start(
        spec,
        Launch {
            matches,
            listener,
            shutdown: shutdown.clone(),
            suite_clients: Vec::new(),
            data_dir: None,
            metrics_listener: None,
        },
    )?;
    let service = tokio::spawn(serve);
    let mut health =
        HealthClient::new(tonic::transport::Channel::from_shared(format!("http://{addr}"))?.connect_lazy());
    until_status(&mut health, ServingStatus::Serving, Duration::from_secs(30)).await?;

    let result = async {
        for round in 1..=2 {
            let stopping = cluster.clone();
            tokio::task::spawn_blocking(move || stopping.stop()).await??;
            let down = until_status(&mut health, ServingStatus::NotServing, Duration::from_secs(5)).await?;
            assert!(
                down < Duration::from_secs(1),
                "round {round}: NOT_SERVING after {down:?}"
            );
            println!("round {round}: NOT_SERVING {down:?} after Postgres stopped");

            let resuming = cluster.clone();
            tokio::task::spawn_blocking(move || resuming.resume(Durability::Ephemeral)).await??;
            let up = until_status(&mut health, ServingStatus::Serving, Duration::from_secs(10)).await?;
            println!("round {round}: SERVING {up:?} after Postgres started");
            // Once the database answers, health stays SERVING.
            let steady = Instant::now();
            while steady.elapsed() < Duration::from_secs(3) {
                let status = health
                    .check(HealthCheckRequest {
                        service: keel_auth::SERVICE_NAME.into(),
                    })
                    .await?
                    .into_inner()
                    .status;
                assert_eq!(
                    status,
                    ServingStatus::Serving as i32,
                    "round {round}: flapped after coming back"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        anyhow::Ok(())
    }
    .await;

    shutdown.cancel();
    service.await??;
    cluster.stop()?;
    let _ = std::fs::remove_dir_all(&root);
    result
}
