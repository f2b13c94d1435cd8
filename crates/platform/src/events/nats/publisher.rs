//! The producer's side: an outbox event as one JetStream publish.

use std::collections::HashMap;

use anyhow::Context as _;
use async_nats::{HeaderMap, header::NATS_MESSAGE_ID};
use keel::events::v1::Event;
use prost::Message as _;

use super::{Broker, headers};
use crate::events::EventType;

/// What JetStream answered a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The message's sequence in the events stream (the first copy's, for
    /// a duplicate).
    pub sequence: u64,
    /// Whether the stream already held a message with this event id, within
    /// its duplicate window, and dropped this one.
    pub duplicate: bool,
}

impl Broker {
    /// Publishes `event` on its type's subject with its id as `Nats-Msg-Id`
    /// and `trace_context` (the publishing span's) in the headers, and waits
    /// for JetStream to acknowledge it: once this returns, the event is
    /// stored (or was already).
    pub async fn publish_event(
        &self,
        event: &Event,
        trace_context: &HashMap<String, String>,
    ) -> anyhow::Result<Published> {
        let payload = event.payload.as_ref().context("the event has no payload")?;
        let subject = self.names().event_subject(EventType::of(payload));
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, event.id.as_str());
        headers::insert_trace_context(&mut headers, trace_context);
        let jetstream = self.jetstream().await?;
        let ack = jetstream
            .publish_with_headers(subject.clone(), headers, event.encode_to_vec().into())
            .await
            .with_context(|| format!("publishing to {subject}"))?
            .await
            .with_context(|| format!("waiting for JetStream to acknowledge the publish to {subject}"))?;
        Ok(Published {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}
