//! `keel bench gateway`: what the REST/JSON edge costs. GET /v1/accounts/me
//! through the gateway against GetAccount("me") made directly over gRPC, by
//! the same signed-in clients at the same concurrency.

use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{
    client::legacy::{Client as HttpClient, connect::HttpConnector},
    rt::TokioExecutor,
};
use keel::accounts::v1::GetAccountRequest;
use keel_gateway::GatewayConfig;

use super::{
    Phases,
    cpu::{self, Medians},
    harness::{Tally, median, throughput},
    suite::{Client, Isolated, Services, bearer, drop_bench_databases},
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
        // The gateway runs on a runtime of its own too, so its CPU time is
        // told apart from the services' and the load generator's.
        let mut gateway = Isolated::new(cpu::GATEWAY)?;
        let listener = gateway.listener()?;
        let gateway_addr = listener.local_addr()?;
        let config = GatewayConfig::from_args([
            "keel",
            // One client per loop sends as fast as it can: no per-client limit.
            "--rate-limit-per-minute",
            "0",
        ])?;
        let upstreams = services
            .addrs
            .iter()
            .map(|(name, addr)| (*name, format!("http://{addr}")))
            .collect();
        let shutdown = gateway.shutdown();
        gateway.spawn("the gateway", || {
            Ok(keel_gateway::run(config, upstreams, listener, None, shutdown))
        })?;
        let measured = self.compare(services, gateway_addr).await;
        gateway.stop().await?;
        measured
    }

    /// The rounds, against the gateway at `gateway_addr`.
    async fn compare(&self, services: &Services, gateway_addr: std::net::SocketAddr) -> anyhow::Result<()> {
        let meter = services.meter.with_gateway();

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
        let (mut rest_cpu, mut grpc_cpu) = (Medians::default(), Medians::default());
        let per_request = |(tally, cpu): (anyhow::Result<Tally>, cpu::Usage)| {
            tally.map(|tally| (tally.per_second, cpu.per_request(tally.calls)))
        };
        for round in self.phases.rounds() {
            let (grpc, grpc_figures) = per_request(
                meter
                    .measure("gRPC", throughput(&grpc_clients, phase, get_over_grpc))
                    .await,
            )?;
            // The direct path does not cross the gateway.
            let grpc_figures = grpc_figures.without_gateway();
            println!("  round {round}: gRPC {grpc:.0}/s; {grpc_figures}");
            let (rest, rest_figures) = per_request(
                meter
                    .measure("gateway", throughput(&rest_clients, phase, get_over_http))
                    .await,
            )?;
            println!(
                "  round {round}: gateway {rest:.0}/s -> {:.2}; {rest_figures}",
                rest / grpc
            );
            ratios.push(rest / grpc);
            grpc_cpu.push_request(&grpc_figures);
            rest_cpu.push_request(&rest_figures);
        }
        println!(
            "GET /v1/accounts/me through the gateway / GetAccount over gRPC: median {:.2} (target >= 0.70); \
             median CPU: {} vs gRPC's {}",
            median(&mut ratios),
            rest_cpu.requests(),
            grpc_cpu.requests()
        );
        Ok(())
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
