//! What the second factor publishes: how each of its operations ended.

use keel_platform::{Error, serve::metrics::Metrics};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    operation: &'static str,
    outcome: String,
}

/// A second-factor operation, as the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// EnrollTotp.
    Enroll,
    /// ConfirmTotp.
    Confirm,
    /// DisableTotp.
    Disable,
    /// A sign-in answered with a challenge.
    Challenge,
    /// VerifySecondFactor.
    Verify,
}

impl Operation {
    const fn as_str(self) -> &'static str {
        match self {
            Operation::Enroll => "enroll",
            Operation::Confirm => "confirm",
            Operation::Disable => "disable",
            Operation::Challenge => "challenge",
            Operation::Verify => "verify",
        }
    }
}

/// The second factor's metrics. Unregistered ones (the default) count for
/// nobody.
#[derive(Debug, Clone, Default)]
pub struct SecondFactorMetrics {
    outcomes: Family<OutcomeLabels, Counter>,
}

impl SecondFactorMetrics {
    /// Publishes them on `metrics` (`keel_second_factor_operations_total`).
    pub fn register(&self, metrics: &Metrics) {
        metrics.register(
            "second_factor_operations",
            "Second-factor operations (enroll, confirm, disable, challenge: a sign-in asked for the second factor, \
             verify), by outcome: ok, or the refusal's reason in lower case (invalid_code, code_reused, \
             too_many_attempts, ...)",
            self.outcomes.clone(),
        );
    }

    /// Counts how `operation` ended. Outcomes are reasons, a bounded set.
    pub fn record<T>(&self, operation: Operation, result: &Result<T, Error>) {
        let outcome = match result {
            Ok(_) => "ok".to_owned(),
            Err(err) => err
                .as_client()
                .map_or_else(|| "internal".to_owned(), |client| client.reason.to_ascii_lowercase()),
        };
        self.outcomes
            .get_or_create(&OutcomeLabels {
                operation: operation.as_str(),
                outcome,
            })
            .inc();
    }
}
