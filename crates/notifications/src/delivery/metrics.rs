//! What the delivery workers publish: every attempt's outcome per channel
//! and per webhook endpoint, how long the oldest due delivery of each
//! channel has waited, and how many dead letters wait for an operator.

use std::{sync::atomic::AtomicU64, time::Duration};

use keel_platform::serve::metrics::Metrics;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use uuid::Uuid;

use crate::domain::Channel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    channel: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: &'static str,
}

/// How an attempt ended, as the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The receiver took it.
    Delivered,
    /// It failed and is tried again later.
    Retried,
    /// It failed for good and became a dead letter.
    DeadLettered,
    /// The webhook receiver answered 410 Gone; its endpoint is disabled.
    Gone,
}

impl Recorded {
    const fn as_str(self) -> &'static str {
        match self {
            Recorded::Delivered => "delivered",
            Recorded::Retried => "retried",
            Recorded::DeadLettered => "dead_lettered",
            Recorded::Gone => "gone",
        }
    }
}

/// The delivery workers' metrics.
#[derive(Debug, Clone)]
pub struct DeliveryMetrics {
    attempts: Family<AttemptLabels, Counter>,
    endpoint_attempts: Family<EndpointLabels, Counter>,
    oldest_due: Family<ChannelLabels, Gauge<f64, AtomicU64>>,
    dead_letters: Gauge,
}

impl DeliveryMetrics {
    /// Registers them on `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let delivery = Self {
            attempts: Family::default(),
            endpoint_attempts: Family::default(),
            oldest_due: Family::default(),
            dead_letters: Gauge::default(),
        };
        metrics.register(
            "notification_deliveries",
            "Attempts at sending a notification (email, webhook), by how they ended: delivered, retried, \
             dead_lettered, gone.",
            delivery.attempts.clone(),
        );
        metrics.register(
            "notification_webhook_deliveries",
            "Attempts at sending a webhook, per endpoint (a user has at most 20), by how they ended: delivered, \
             retried, dead_lettered, gone.",
            delivery.endpoint_attempts.clone(),
        );
        metrics.register(
            "notification_oldest_due_age_seconds",
            "How long the oldest due delivery of each channel (email, webhook) has waited for a worker, measured \
             every 5 s; 0 when none waits.",
            delivery.oldest_due.clone(),
        );
        metrics.register(
            "notification_dead_letters",
            "Dead letters not yet redelivered (ListDeadLetters).",
            delivery.dead_letters.clone(),
        );
        delivery
    }

    /// Counts one attempt on `channel`, to `endpoint` for a webhook.
    pub fn attempted(&self, channel: Channel, endpoint: Option<Uuid>, recorded: Recorded) {
        let labels = AttemptLabels {
            channel: channel.as_str(),
            outcome: recorded.as_str(),
        };
        self.attempts.get_or_create(&labels).inc();
        if let Some(endpoint) = endpoint {
            let labels = EndpointLabels {
                endpoint: endpoint.to_string(),
                outcome: recorded.as_str(),
            };
            self.endpoint_attempts.get_or_create(&labels).inc();
        }
    }

    /// Publishes how long the oldest due delivery on `channel` has waited.
    pub fn oldest_due(&self, channel: Channel, waited: Duration) {
        let labels = ChannelLabels {
            channel: channel.as_str(),
        };
        self.oldest_due.get_or_create(&labels).set(waited.as_secs_f64());
    }

    /// Publishes how many dead letters wait.
    pub fn dead_letters(&self, count: i64) {
        self.dead_letters.set(count);
    }
}
