//! The services behind the gateway, and the calls made on them.
//!
//! Each area has one connection for unary calls and health checks, and a
//! pool of connections for server streams, so open streams can never use up
//! the HTTP/2 stream budget that unary calls need (a service accepts
//! `KEEL_GRPC_MAX_STREAMS_PER_CONNECTION`, 256 by default, per connection). The pool
//! puts at most [`STREAMS_PER_CONNECTION`] streams on each of its
//! connections and opens another when all are full; every connection is
//! made lazily.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::Context as _;
use futures::{Stream, StreamExt as _};
use prost_reflect::DynamicMessage;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status, metadata::MetadataMap, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use keel_platform::client::ClientConfig;

use crate::{codec::DynamicCodec, routes::Route};

/// How many streams the gateway opens on one upstream connection: well
/// under a service's default cap of 256, so a connection never refuses one.
pub const STREAMS_PER_CONNECTION: usize = 100;

/// The upstream service of each area (`auth`, `accounts`, ...).
#[derive(Debug, Clone, Default)]
pub struct Upstreams {
    channels: BTreeMap<String, Channel>,
    streams: BTreeMap<String, StreamPool>,
}

impl Upstreams {
    /// Adds `area`'s service at `url` (connected on first use).
    pub fn add(&mut self, area: &str, url: &str, client: &ClientConfig) -> anyhow::Result<()> {
        let channel = keel_platform::client::channel(url, client).with_context(|| format!("the {area} URL"))?;
        self.channels.insert(area.to_owned(), channel);
        self.streams.insert(
            area.to_owned(),
            StreamPool {
                url: url.to_owned(),
                client: client.clone(),
                connections: Arc::default(),
            },
        );
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
                .map_err(|status| went_away(timed_out(status, started, timeout))),
            Err(_) => Err(deadline(timeout)),
        }
    }

    /// Opens a server stream on one of the area's stream connections;
    /// `timeout` bounds the wait for its first reply (the stream itself may
    /// run as long as the client stays).
    pub async fn server_streaming(
        &self,
        route: &Route,
        message: DynamicMessage,
        metadata: MetadataMap,
        timeout: Duration,
    ) -> Result<impl Stream<Item = Result<DynamicMessage, Status>> + use<>, Status> {
        let pool = self
            .streams
            .get(route.area())
            .ok_or_else(|| Status::unavailable(format!("no {} service is configured", route.area())))?;
        let (channel, place) = pool.place().map_err(|err| Status::internal(format!("{err:#}")))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = metadata;
        let call = async {
            grpc.ready().await.map_err(unavailable)?;
            grpc.server_streaming(request, route.grpc_path.clone(), DynamicCodec::new(route.rpc.output()))
                .await
        };
        let replies = match tokio::time::timeout(timeout, call).await {
            Ok(reply) => reply.map(tonic::Response::into_inner).map_err(went_away)?,
            Err(_) => return Err(deadline(timeout)),
        };
        // The place on the connection is given back when the stream ends.
        Ok(replies.map(move |reply| {
            let _held = &place;
            reply
        }))
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

    /// How many stream connections `area`'s pool has made.
    pub fn stream_connections(&self, area: &str) -> usize {
        self.streams.get(area).map_or(0, StreamPool::len)
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

/// An area's connections for server streams.
#[derive(Debug, Clone)]
struct StreamPool {
    url: String,
    client: ClientConfig,
    connections: Arc<Mutex<Vec<StreamConnection>>>,
}

/// One connection of a pool, and its free places.
#[derive(Debug)]
struct StreamConnection {
    channel: Channel,
    places: Arc<Semaphore>,
}

impl StreamPool {
    /// A connection with room for one more stream, and the place taken on
    /// it: the one with the most room, or a new one when all are full.
    fn place(&self) -> anyhow::Result<(Channel, OwnedSemaphorePermit)> {
        let mut connections = self.connections.lock().unwrap_or_else(PoisonError::into_inner);
        let roomiest = connections
            .iter()
            .max_by_key(|connection| connection.places.available_permits())
            .and_then(|connection| {
                Some((
                    connection.channel.clone(),
                    connection.places.clone().try_acquire_owned().ok()?,
                ))
            });
        if let Some(found) = roomiest {
            return Ok(found);
        }
        let channel = keel_platform::client::channel(&self.url, &self.client)?;
        let places = Arc::new(Semaphore::new(STREAMS_PER_CONNECTION));
        let place = places.clone().try_acquire_owned()?;
        connections.push(StreamConnection {
            channel: channel.clone(),
            places,
        });
        Ok((channel, place))
    }

    /// How many connections the pool has made.
    fn len(&self) -> usize {
        self.connections.lock().unwrap_or_else(PoisonError::into_inner).len()
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

/// A connection that broke before the answer came (the replica died
/// mid-call) reaches tonic as UNKNOWN "transport error"; to the client it is
/// UNAVAILABLE: retry, with the same request id where the call takes one.
fn went_away(status: Status) -> Status {
    if status.code() == Code::Unknown && from_transport(&status) {
        Status::unavailable(format!(
            "the service went away before answering ({}); retry",
            status.message()
        ))
    } else {
        status
    }
}

/// Whether `status` came from the connection rather than the service.
fn from_transport(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::transport::Error>() || err.is::<hyper::Error>() {
            return true;
        }
        source = err.source();
    }
    false
}

fn deadline(timeout: Duration) -> Status {
    Status::deadline_exceeded(format!("the service did not answer within {} ms", timeout.as_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_stream_pool_opens_a_connection_per_hundred_streams_and_reuses_freed_places() {
        let pool = StreamPool {
            url: "http://127.0.0.1:1".into(),
            client: ClientConfig::default(),
            connections: Arc::default(),
        };
        let mut places: Vec<_> = (0..2 * STREAMS_PER_CONNECTION + 1)
            .map(|_| pool.place().expect("a place").1)
            .collect();
        assert_eq!(pool.len(), 3, "two full connections and a third");
        places.truncate(STREAMS_PER_CONNECTION);
        for _ in 0..STREAMS_PER_CONNECTION {
            places.push(pool.place().expect("a place").1);
        }
        assert_eq!(pool.len(), 3, "freed places are taken before a new connection");
    }
}
