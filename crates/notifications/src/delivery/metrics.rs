//! What the delivery workers publish: every attempt's outcome per channel,
//! and how many dead letters wait for an operator.

use keel_platform::serve::metrics::Metrics;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};

use crate::domain::Channel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    channel: &'static str,
    outcome: &'static str,
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
    dead_letters: Gauge,
}

impl DeliveryMetrics {
    /// Registers them on `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let delivery = Self {
            attempts: Family::default(),
            dead_letters: Gauge::default(),
        };
        metrics.register(
            "notification_deliveries",
            "Attempts at sending a notification (email, webhook), by how they ended: delivered, retried, \
             dead_lettered, gone.",
            delivery.attempts.clone(),
        );
        metrics.register(
            "notification_dead_letters",
            "Dead letters not yet redelivered (ListDeadLetters).",
            delivery.dead_letters.clone(),
        );
        delivery
    }

    /// Counts one attempt on `channel`.
    pub fn attempted(&self, channel: Channel, recorded: Recorded) {
        let labels = AttemptLabels {
            channel: channel.as_str(),
            outcome: recorded.as_str(),
        };
        self.attempts.get_or_create(&labels).inc();
    }

    /// Publishes how many dead letters wait.
    pub fn dead_letters(&self, count: i64) {
        self.dead_letters.set(count);
    }
}
