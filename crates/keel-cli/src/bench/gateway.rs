//! `keel bench gateway`: what the REST/JSON edge costs. GET /v1/accounts/me
//! through the gateway against GetAccount("me") made directly over gRPC, by
//! the same signed-in clients at the same concurrency.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{
    client::legacy::{Client as HttpClient, connect::HttpConnector},
    rt::TokioExecutor,
};
use keel::accounts::v1::GetAccountRequest;
use keel_gateway::GatewayConfig;
use tokio_util::sync::CancellationToken;

use super::{
    Phases,
    harness::{median, throughput},
    suite::{Client, Services, bearer, drop_bench_databases},
};
use crate::database::DatabaseArgs;

/// `keel bench gateway`.
#[derive(Debug, Args)]
pub struct GatewayBench {
    #[command(flatten)]
    phases: Phases,

    #[command(flatten)]
    database: DatabaseArgs,
}

/// A bench client with an HTTP/1.1 connection of its own to the gateway.
#[derive(Clone)]
struct RestClient {
    http: HttpClient<HttpConnector, Empty<Bytes>>,
    uri: http::Uri,
    authorization: http::HeaderValue,
}

impl GatewayBench {
    /// Runs the bench.
    pub async fn run(self) -> anyhow::Result<()> {
        let database = self.database.open().await?;
        let result = async {
            let services = Services::start(&database).await?;
            let measured = self.measure(&services).await;
            services.stop().await?;
            measured
        }
        .await;
        if let Ok(server) = database.url("postgres") {
            drop_bench_databases(&server).await;
        }
        database.close();
        result
    }

    async fn measure(&self, services: &Services) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let gateway_addr = listener.local_addr()?;
        let config = GatewayConfig::from_args([
            "keel",
            // One client per loop sends as fast as it can: no per-client limit.
            "--rate-limit-per-minute",
            "0",
        ])?;
        let shutdown = CancellationToken::new();
        let gateway = tokio::spawn(keel_gateway::run(
            config,
            services
                .addrs
                .iter()
                .map(|(name, addr)| (*name, format!("http://{addr}")))
                .collect(),
            listener,
            None,
            shutdown.clone(),
        ));

        let grpc_clients = services.clients(self.phases.concurrency).await?;
        let rest_clients = grpc_clients
            .iter()
            .map(|client| rest_client(gateway_addr, client))
            .collect::<anyhow::Result<Vec<_>>>()?;
        println!(
            "keel bench gateway: {} clients, {} rounds of {}s phases; GET /v1/accounts/me vs gRPC GetAccount(me)",
            self.phases.concurrency, self.phases.rounds, self.phases.seconds
        );
        // Warm both paths (connections, token caches).
        throughput(&rest_clients, Duration::from_millis(500), get_over_http).await?;
        throughput(&grpc_clients, Duration::from_millis(500), get_over_grpc).await?;

        let phase = self.phases.phase();
        let mut ratios = Vec::new();
        for round in self.phases.rounds() {
            let grpc = throughput(&grpc_clients, phase, get_over_grpc).await?;
            let rest = throughput(&rest_clients, phase, get_over_http).await?;
            println!(
                "  round {round}: gateway {rest:.0}/s vs gRPC {grpc:.0}/s -> {:.2}",
                rest / grpc
            );
            ratios.push(rest / grpc);
        }
        println!(
            "GET /v1/accounts/me through the gateway / GetAccount over gRPC: median {:.2} (target >= 0.70)",
            median(&mut ratios)
        );
        shutdown.cancel();
        gateway.await.context("the gateway panicked")?
    }
}

fn rest_client(gateway: std::net::SocketAddr, client: &Client) -> anyhow::Result<RestClient> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Ok(RestClient {
        http: HttpClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build(connector),
        uri: format!("http://{gateway}/v1/accounts/me").parse()?,
        authorization: format!("Bearer {}", client.user_token).parse()?,
    })
}

async fn get_over_grpc(mut client: Client) -> anyhow::Result<()> {
    let request = GetAccountRequest {
        account_id: "me".into(),
    };
    client
        .accounts
        .get_account(bearer(request, &client.user_token)?)
        .await?;
    Ok(())
}

async fn get_over_http(client: RestClient) -> anyhow::Result<()> {
    let request = http::Request::get(client.uri)
        .header(http::header::AUTHORIZATION, client.authorization)
        .body(Empty::new())?;
    let response = client.http.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status.is_success(), "{status}: {}", String::from_utf8_lossy(&body));
    Ok(())
}
