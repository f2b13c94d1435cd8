//! The services behind the gateway: one lazily connected channel per area,
//! and the calls made on them.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use futures::Stream;
use prost_reflect::DynamicMessage;
use tonic::{Code, Status, metadata::MetadataMap, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use keel_platform::client::ClientConfig;

use crate::{codec::DynamicCodec, routes::Route};

/// The upstream service of each area (`auth`, `accounts`, ...).
#[derive(Debug, Clone, Default)]
pub struct Upstreams {
    channels: BTreeMap<String, Channel>,
}

impl Upstreams {
    /// Adds `area`'s service at `url` (connected on first use).
    pub fn add(&mut self, area: &str, url: &str, client: &ClientConfig) -> anyhow::Result<()> {
        let channel = keel_platform::client::channel(url, client).with_context(|| format!("the {area} URL"))?;
        self.channels.insert(area.to_owned(), channel);
        Ok(())
    }

    /// Calls a unary RPC, giving up after `timeout`.
    pub async fn unary(
        &self,
        route: &Route,
        message: DynamicMessage,
        metadata: MetadataMap,
        timeout: Duration,
    ) -> Result<DynamicMessage, Status> {
        let mut grpc = self.client(route)?;
        let request = request(message, metadata, timeout);
        let call = async {
            grpc.ready().await.map_err(unavailable)?;
            grpc.unary(request, route.grpc_path.clone(), DynamicCodec::new(route.rpc.output()))
                .await
        };
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(timeout, call).await {
            Ok(reply) => reply
                .map(tonic::Response::into_inner)
                .map_err(|status| timed_out(status, started, timeout)),
            Err(_) => Err(deadline(timeout)),
        }
    }

    /// Opens a server stream; `timeout` bounds the wait for its first reply
    /// (the stream itself may run as long as the client stays).
    pub async fn server_streaming(
        &self,
        route: &Route,
        message: DynamicMessage,
        metadata: MetadataMap,
        timeout: Duration,
    ) -> Result<impl Stream<Item = Result<DynamicMessage, Status>> + use<>, Status> {
        let mut grpc = self.client(route)?;
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = metadata;
        let call = async {
            grpc.ready().await.map_err(unavailable)?;
            grpc.server_streaming(request, route.grpc_path.clone(), DynamicCodec::new(route.rpc.output()))
                .await
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(reply) => reply.map(tonic::Response::into_inner),
            Err(_) => Err(deadline(timeout)),
        }
    }

    /// Each area's health (the overall status, service name `""`).
    pub async fn health(&self, timeout: Duration) -> BTreeMap<String, bool> {
        let checks = self.channels.iter().map(|(area, channel)| async move {
            let mut client = HealthClient::new(channel.clone());
            let check = client.check(HealthCheckRequest { service: String::new() });
            let serving = matches!(
                tokio::time::timeout(timeout, check).await,
                Ok(Ok(reply)) if reply.get_ref().status() == ServingStatus::Serving
            );
            (area.clone(), serving)
        });
        futures::future::join_all(checks).await.into_iter().collect()
    }

    /// `area`'s channel, if it has a service.
    pub fn channel(&self, area: &str) -> Option<Channel> {
        self.channels.get(area).cloned()
    }

    fn client(&self, route: &Route) -> Result<tonic::client::Grpc<Channel>, Status> {
        let channel = self
            .channel(route.area())
            .ok_or_else(|| Status::unavailable(format!("no {} service is configured", route.area())))?;
        Ok(tonic::client::Grpc::new(channel))
    }
}

fn request(message: DynamicMessage, metadata: MetadataMap, timeout: Duration) -> tonic::Request<DynamicMessage> {
    let mut request = tonic::Request::new(message);
    *request.metadata_mut() = metadata;
    request.set_timeout(timeout);
    request
}

fn unavailable(err: tonic::transport::Error) -> Status {
    Status::new(Code::Unavailable, format!("the service is unavailable: {err}"))
}

/// tonic's channel enforces the `grpc-timeout` it sends and reports it as
/// CANCELLED; past the deadline, that is the upstream being too slow.
fn timed_out(status: Status, started: tokio::time::Instant, timeout: Duration) -> Status {
    if status.code() == Code::Cancelled && started.elapsed() >= timeout {
        deadline(timeout)
    } else {
        status
    }
}

fn deadline(timeout: Duration) -> Status {
    Status::deadline_exceeded(format!("the service did not answer within {} ms", timeout.as_millis()))
}
