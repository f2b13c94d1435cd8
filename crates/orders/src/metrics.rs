//! What orders publishes about its money: refunds refused for good, and
//! what reconciliation repaired.

use keel_platform::serve::metrics::Metrics;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepairLabels {
    kind: &'static str,
}

/// Orders' payment metrics. Unregistered ones (the default) count for
/// nobody.
#[derive(Debug, Clone, Default)]
pub struct PaymentMetrics {
    repairs: Family<RepairLabels, Counter>,
    refunds_failed: Counter,
}

impl PaymentMetrics {
    /// Registers them on `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let payments = Self::default();
        metrics.register(
            "payment_repairs",
            "Differences between orders and their payments that reconciliation repaired, by kind",
            payments.repairs.clone(),
        );
        metrics.register(
            "refunds_failed",
            "Refunds the payment provider refused for good; the orders wait for an operator \
             (ListOrders with refund_state REFUND_STATE_FAILED)",
            payments.refunds_failed.clone(),
        );
        payments
    }

    /// Counts one repair of `kind`.
    pub fn repaired(&self, kind: &'static str) {
        self.repairs.get_or_create(&RepairLabels { kind }).inc();
    }

    /// Counts one refund refused for good.
    pub fn refund_failed(&self) {
        self.refunds_failed.inc();
    }
}
