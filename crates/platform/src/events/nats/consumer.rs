//! The consumer's side: a durable pull consumer per service, each event
//! applied through the service's own EventSink, acked after it committed,
//! retried with backoff, and dead-lettered after too many deliveries.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use async_nats::{
    HeaderMap,
    header::NATS_MESSAGE_ID,
    jetstream::{
        self, AckKind,
        consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
    },
};
use futures::StreamExt as _;
use keel::events::v1::{DeliverRequest, Event, event_sink_server::EventSink};
use prometheus_client::{encoding::EncodeLabelSet, metrics::counter::Counter, metrics::family::Family};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{Broker, headers};
use crate::{
    auth::principal::{Principal, ServicePrincipal},
    auth::scopes,
    events::{self, EventProducers, EventType, relay::backoff},
    serve::metrics::Metrics,
};

/// Messages pulled ahead of the one being applied: enough to keep a
/// consumer busy, few enough that the last of them is applied well within
/// the ack wait.
const PULL_BATCH: usize = 32;
/// The longest wait before setting up the consumer again after a failure.
const MAX_SETUP_BACKOFF: Duration = Duration::from_secs(30);
/// The longest reason a dead letter carries in its headers.
const MAX_REASON_LEN: usize = 1024;

/// One service's durable consumer of the events it consumes.
pub struct Consumer {
    broker: Broker,
    service: &'static str,
    event_types: Vec<EventType>,
    sink: Arc<dyn EventSink>,
    producers: EventProducers,
    max_backoff: Duration,
    metrics: ConsumerMetrics,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("service", &self.service)
            .field("event_types", &self.event_types)
            .field("broker", &self.broker)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReceiptLabels {
    consumer: &'static str,
    event_type: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadLetterLabels {
    consumer: &'static str,
    event_type: &'static str,
}

/// What a consumer publishes: what became of each delivery, and what it
/// gave up on.
#[derive(Clone, Debug)]
struct ConsumerMetrics {
    receipts: Family<ReceiptLabels, Counter>,
    dead_lettered: Family<DeadLetterLabels, Counter>,
}

impl ConsumerMetrics {
    fn new(metrics: &Metrics) -> Self {
        let consumer = Self {
            receipts: Family::default(),
            dead_lettered: Family::default(),
        };
        metrics.register(
            "events_received",
            "Events delivered by NATS to this consumer, by outcome (applied, duplicate, retried, dead_lettered).",
            consumer.receipts.clone(),
        );
        metrics.register(
            "events_dead_lettered",
            "Events this consumer gave up on and published to its dead-letter subject.",
            consumer.dead_lettered.clone(),
        );
        consumer
    }
}

/// How applying one delivered message went.
enum Outcome {
    /// Applied now, or (`duplicate`) before: ack it.
    Applied { duplicate: bool },
    /// The service failed to apply it: try again later, unless that was its
    /// last delivery.
    Failed(String),
    /// No delivery of it can ever succeed (undecodable, not from its type's
    /// producer, too old): dead-letter it now.
    Refused(String),
}

impl Consumer {
    /// The consumer of `event_types` for Keel service `service`, applying
    /// each event through `sink` (the service's EventSink) as from the
    /// producer `producers` names for its type. Failed events are delivered
    /// again after a backoff of at most `max_backoff` (the relay's).
    pub fn new(
        broker: Broker,
        service: &'static str,
        event_types: Vec<EventType>,
        sink: Arc<dyn EventSink>,
        producers: EventProducers,
        max_backoff: Duration,
        metrics: &Metrics,
    ) -> Self {
        Self {
            broker,
            service,
            event_types,
            sink,
            producers,
            max_backoff,
            metrics: ConsumerMetrics::new(metrics),
        }
    }

    /// Consumes until `shutdown`: sets the consumer up (again after any
    /// failure, with backoff), then applies what it delivers, one event at
    /// a time. An event being applied at shutdown is finished and settled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0;
        while let Err(err) = self.consume(&shutdown, &mut failures).await {
            let wait = backoff(failures, MAX_SETUP_BACKOFF);
            failures = failures.saturating_add(1);
            tracing::warn!(
                error = format!("{err:#}"),
                ?wait,
                consumer = self.service,
                "consuming events from NATS failed; will retry"
            );
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Sets the durable consumer up (then `failures` starts again from 0)
    /// and applies what it delivers, until `shutdown` (Ok) or the delivery
    /// stream fails.
    async fn consume(&self, shutdown: &CancellationToken, failures: &mut i32) -> anyhow::Result<()> {
        let consumer = tokio::select! {
            consumer = self.ensure() => consumer?,
            () = shutdown.cancelled() => return Ok(()),
        };
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .messages()
            .await
            .context("pulling from the consumer")?;
        *failures = 0;
        tracing::info!(consumer = self.service, "consuming events from NATS");
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                () = shutdown.cancelled() => return Ok(()),
            };
            match next {
                // Not raced against shutdown: an event is applied and
                // settled whole.
                Some(Ok(message)) => self.handle(message).await,
                Some(Err(err)) => return Err(err).context("receiving from the consumer"),
                None => anyhow::bail!("the consumer's delivery stream ended"),
            }
        }
    }

    /// Creates the durable consumer, or brings an existing one to this
    /// configuration (JetStream's create-or-update): the same call from
    /// every replica, at every start.
    async fn ensure(&self) -> anyhow::Result<PullConsumer> {
        let jetstream = self.broker.jetstream().await?;
        let names = self.broker.names();
        let stream_name = names.events_stream();
        let stream = jetstream
            .get_stream(&stream_name)
            .await
            .with_context(|| format!("looking up the stream {stream_name}"))?;
        let name = names.consumer(self.service);
        let config = pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!("Keel's {}: the events it consumes.", self.service)),
            filter_subjects: self.event_types.iter().map(|t| names.event_subject(*t)).collect(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.broker.config().ack_wait(),
            // No limit on the server: the last delivery Keel allows is
            // dead-lettered here, and a dead-letter publish that fails must
            // be delivered again rather than dropped by the server.
            max_deliver: -1,
            metadata: [(
                "keel.max_deliver".to_owned(),
                self.broker.config().nats_max_deliver.to_string(),
            )]
            .into(),
            ..Default::default()
        };
        stream
            .create_consumer(config)
            .await
            .with_context(|| format!("creating or updating the consumer {name} on {stream_name}"))
    }

    /// Applies one message and settles it: ack, nak with a delay, or
    /// dead-letter and terminate.
    async fn handle(&self, message: jetstream::Message) {
        let (delivered, sequence) = match message.info() {
            Ok(info) => (info.delivered, info.stream_sequence),
            Err(err) => {
                // Not a JetStream delivery: nothing to settle.
                tracing::warn!(error = %err, subject = %message.subject, "a message without delivery information");
                return;
            }
        };
        let subject = message.subject.to_string();
        let event_type = self.broker.names().event_type_of(&subject);
        let type_label = event_type.map_or("unknown", EventType::as_str);
        let span = tracing::info_span!(
            parent: None,
            "event.receive",
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            keel.service = self.service,
            messaging.system = "nats",
            messaging.destination.name = %subject,
            messaging.consumer.group.name = %self.broker.names().consumer(self.service),
            messaging.message.delivery_attempt = delivered,
            event.id = tracing::field::Empty,
            "event.type" = type_label,
        );
        // A child of the relay's publishing span, so the trace runs on from
        // the producer into this consumer.
        crate::serve::telemetry::continue_trace(&span, &headers::trace_context(message.headers.as_ref()));
        let outcome = self
            .apply(&message.payload, event_type, &span)
            .instrument(span.clone())
            .await;
        let last = delivered >= self.broker.config().nats_max_deliver;
        let settled = match outcome {
            Outcome::Applied { duplicate } => {
                self.count(type_label, if duplicate { "duplicate" } else { "applied" });
                // After the commit: a lost ack only means one more delivery,
                // which processed_events makes a duplicate.
                message.ack().await
            }
            Outcome::Failed(reason) if !last => {
                span.record("otel.status_code", "ERROR");
                let wait = backoff(i32::try_from(delivered - 1).unwrap_or(i32::MAX), self.max_backoff);
                tracing::warn!(parent: &span, reason, delivered, ?wait, "applying an event failed; it will be delivered again");
                self.count(type_label, "retried");
                message.ack_with(AckKind::Nak(Some(wait))).await
            }
            Outcome::Failed(reason) | Outcome::Refused(reason) => {
                span.record("otel.status_code", "ERROR");
                self.give_up(&message, &subject, type_label, delivered, sequence, &reason)
                    .instrument(span.clone())
                    .await
            }
        };
        if let Err(err) = settled {
            tracing::warn!(parent: &span, error = %err, "settling a delivered event failed; it will be delivered again");
        }
    }

    /// Decodes the event and hands it to the service's EventSink as a call
    /// from its type's producer.
    async fn apply(&self, payload: &[u8], subject_type: Option<EventType>, span: &tracing::Span) -> Outcome {
        let event = match Event::decode(payload) {
            Ok(event) => event,
            Err(err) => return Outcome::Refused(format!("undecodable event: {err}")),
        };
        span.record("event.id", event.id.as_str());
        let Some(subject_type) = subject_type else {
            return Outcome::Refused("the subject names no event type".to_owned());
        };
        // The subject is what NATS permissions guard: the payload must be
        // of the type its subject says, or a publisher allowed one type
        // could send another.
        if event.payload.as_ref().map(EventType::of) != Some(subject_type) {
            return Outcome::Refused(format!("the event is not a {subject_type}, as its subject says"));
        }
        let Some(producer) = self.producers.producer(subject_type) else {
            return Outcome::Refused(format!("no service produces {subject_type}"));
        };
        // The EventSink's own checks, first here: an event they refuse
        // would be refused at every delivery.
        if let Err(err) = events::delivery(deliver_request(&event, producer), &self.producers) {
            return Outcome::Refused(err.to_string());
        }
        match self.sink.deliver(deliver_request(&event, producer)).await {
            Ok(response) => Outcome::Applied {
                duplicate: response.into_inner().duplicate,
            },
            Err(status) => Outcome::Failed(format!("{:?}: {}", status.code(), status.message())),
        }
    }

    /// Publishes the message to the dead-letter subject and terminates it
    /// (no more deliveries); if the publish fails, it is delivered again
    /// and given up on then.
    async fn give_up(
        &self,
        message: &jetstream::Message,
        subject: &str,
        type_label: &'static str,
        delivered: i64,
        sequence: u64,
        reason: &str,
    ) -> Result<(), async_nats::Error> {
        match self.dead_letter(message, subject, delivered, sequence, reason).await {
            Ok(dead_subject) => {
                tracing::error!(reason, delivered, dead_letter = %dead_subject, "gave up on an event; it is in the dead-letter stream");
                self.count(type_label, "dead_lettered");
                self.metrics
                    .dead_lettered
                    .get_or_create(&DeadLetterLabels {
                        consumer: self.service,
                        event_type: type_label,
                    })
                    .inc();
                message.ack_with(AckKind::Term).await
            }
            Err(err) => {
                let wait = backoff(i32::try_from(delivered - 1).unwrap_or(i32::MAX), self.max_backoff);
                tracing::warn!(
                    error = format!("{err:#}"),
                    reason,
                    ?wait,
                    "dead-lettering an event failed; it will be delivered again"
                );
                message.ack_with(AckKind::Nak(Some(wait))).await
            }
        }
    }

    /// Publishes the message as it came, with why and after how many
    /// deliveries it was given up on, to `keel.dead.<service>.<type>`.
    /// Returns that subject.
    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        subject: &str,
        delivered: i64,
        sequence: u64,
        reason: &str,
    ) -> anyhow::Result<String> {
        let names = self.broker.names();
        let type_name = names.event_type_name(subject).unwrap_or("unknown");
        let dead_subject = names.dead_letter_subject(self.service, type_name);
        let mut headers = HeaderMap::new();
        // One dead letter per message and consumer, even if published twice.
        headers.insert(NATS_MESSAGE_ID, format!("{}-{sequence}", names.consumer(self.service)));
        headers::insert_trace_context(&mut headers, &headers::trace_context(message.headers.as_ref()));
        headers.insert("Keel-Consumer", self.service);
        headers.insert("Keel-Subject", subject);
        headers.insert("Keel-Stream-Sequence", sequence.to_string());
        headers.insert("Keel-Deliveries", delivered.to_string());
        headers.insert("Keel-Reason", headers::one_line(reason, MAX_REASON_LEN));
        let jetstream = self.broker.jetstream().await?;
        jetstream
            .publish_with_headers(dead_subject.clone(), headers, message.payload.clone())
            .await
            .with_context(|| format!("publishing to {dead_subject}"))?
            .await
            .with_context(|| format!("waiting for JetStream to acknowledge the publish to {dead_subject}"))?;
        Ok(dead_subject)
    }

    fn count(&self, event_type: &'static str, outcome: &'static str) {
        self.metrics
            .receipts
            .get_or_create(&ReceiptLabels {
                consumer: self.service,
                event_type,
                outcome,
            })
            .inc();
    }
}

/// A Deliver call carrying `event` as from the service `producer`: what the
/// relay's call would be once the sink's server had verified its token.
/// Here JetStream has authenticated the publisher, and NATS permissions let
/// only `producer` publish on its types' subjects.
fn deliver_request(event: &Event, producer: &'static str) -> tonic::Request<DeliverRequest> {
    let mut request = tonic::Request::new(DeliverRequest {
        event: Some(event.clone()),
    });
    request.extensions_mut().insert(Principal::Service(ServicePrincipal {
        client_id: producer.to_owned(),
        scopes: vec![scopes::EVENTS_DELIVER.to_owned()],
    }));
    request
}
