//! Open streams (Server-Sent Events and WebSocket sessions): how many each
//! client may hold at once, and what they show in the metrics.
//!
//! A stream holds a gateway connection, an upstream HTTP/2 stream and a
//! subscription in the service for as long as it lives, however little it
//! asks of the rate limit (one request). Without a cap one client could hold
//! as many as the gateway has connections; with it, a client over its cap
//! gets 429 and everyone else is unaffected.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use futures::{Stream, StreamExt as _};
use keel_platform::serve::metrics::Metrics;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use tonic::{Code, Status};

use crate::{edge::ClientKey, error::ApiError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    route: Arc<str>,
    reason: &'static str,
}

/// The streams open now, per client.
#[derive(Debug, Clone)]
pub struct OpenStreams {
    /// The most one client may hold; None: no cap.
    per_client: Option<usize>,
    open: Arc<Mutex<HashMap<ClientKey, usize>>>,
    gauge: Family<RouteLabels, Gauge>,
    refused: Family<RefusedLabels, Counter>,
}

impl OpenStreams {
    /// At most `per_client` streams per client (0: no cap).
    pub fn new(per_client: usize) -> Self {
        Self {
            per_client: (per_client > 0).then_some(per_client),
            open: Arc::default(),
            gauge: Family::default(),
            refused: Family::default(),
        }
    }

    /// Publishes the streams' metrics on `metrics`.
    pub fn register(&self, metrics: &Metrics) {
        metrics.register(
            "gateway_open_streams",
            "Event streams and WebSocket sessions open now, by route template.",
            self.gauge.clone(),
        );
        metrics.register(
            "gateway_streams_refused",
            "Streams refused, by route template and reason (client_cap: the client holds its most).",
            self.refused.clone(),
        );
    }

    /// A place for one more stream of `client` on `route`; 429 when the
    /// client already holds its most.
    pub fn open(&self, client: ClientKey, route: &Arc<str>) -> Result<StreamPermit, ApiError> {
        {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            let held = open.entry(client.clone()).or_insert(0);
            if let Some(cap) = self.per_client
                && *held >= cap
            {
                self.refused
                    .get_or_create(&RefusedLabels {
                        route: route.clone(),
                        reason: "client_cap",
                    })
                    .inc();
                return Err(ApiError::from(Status::new(
                    Code::ResourceExhausted,
                    format!("this client already holds {cap} open streams, the most it may; close one first"),
                )));
            }
            *held += 1;
        }
        let gauge = self.gauge.get_or_create(&RouteLabels { route: route.clone() }).clone();
        gauge.inc();
        Ok(StreamPermit {
            client,
            open: self.open.clone(),
            gauge,
        })
    }

    /// How many streams `client` holds.
    pub fn held_by(&self, client: &ClientKey) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(client).copied().unwrap_or(0)
    }
}

/// One open stream's place; given back when dropped.
#[derive(Debug)]
pub struct StreamPermit {
    client: ClientKey,
    open: Arc<Mutex<HashMap<ClientKey, usize>>>,
    gauge: Gauge,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.gauge.dec();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = open.get_mut(&self.client) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// `stream`, holding `permit` for as long as it lives.
pub fn holding<S: Stream>(stream: S, permit: StreamPermit) -> impl Stream<Item = S::Item> {
    stream.map(move |item| {
        let _held = &permit;
        item
    })
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn each_client_holds_at_most_its_cap_and_gets_places_back() {
        let streams = OpenStreams::new(2);
        let route: Arc<str> = "/v1/notifications:stream".into();
        let a = ClientKey::Address(IpAddr::from([10, 0, 0, 1]));
        let b = ClientKey::Address(IpAddr::from([10, 0, 0, 2]));
        let first = streams.open(a.clone(), &route).expect("one");
        let _second = streams.open(a.clone(), &route).expect("two");
        let refused = streams.open(a.clone(), &route).expect_err("three is over the cap");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        let _other = streams.open(b.clone(), &route).expect("another client is not affected");
        drop(first);
        assert_eq!(streams.held_by(&a), 1);
        let _again = streams.open(a.clone(), &route).expect("a place came back");
        assert!(OpenStreams::new(0).open(a, &route).is_ok(), "0 means no cap");
    }
}
