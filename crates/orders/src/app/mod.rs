//! What orders does, apart from how it is called: the service's state
//! ([`Orders`]) and its operations, one file per capability. The gRPC
//! adapters in `service/` call these; nothing here knows gRPC's types.
//!
//! - [`place`](Orders::place): reserve, snapshot and insert an order;
//! - [`pay`](Orders::pay): charge it and record the outcome;
//! - [`cancel`](Orders::cancel), [`expire`](Orders::expire) and
//!   [`settle`](Orders::settle): cancel it and give back what is owed;
//! - [`ship`](Orders::ship) and [`deliver`](Orders::deliver);
//! - [`resume`]: the worker that finishes what a crash or an outage left;
//! - [`reconcile`]: orders against the money their providers hold.
//!
//! Every step on an order's payment runs under a claim whose fencing token
//! each write checks (`claims`).

mod cancel;
mod claims;
mod fulfil;
mod pay;
mod place;
pub mod reconcile;
pub mod resume;

use std::sync::Arc;

use keel_platform::{Error, db::Pool};

pub use pay::{Step, charge_of};
pub use place::{Line, PlaceOrder, Placed};

use crate::{config::SagaConfig, metrics::PaymentMetrics, payment::Providers, store::orders::TransitionError};

/// The event source name of orders: its service name, which is also the
/// client id its relay's tokens carry.
pub const SOURCE: &str = crate::domain::NAME;

/// The orders service's state: its database, its payment providers and how
/// the saga paces itself. Clones share it.
#[derive(Clone)]
pub struct Orders {
    pub(crate) pool: Pool,
    pub(crate) payments: Providers,
    pub(crate) saga: Arc<SagaConfig>,
    /// The card gateway's webhook signing secrets.
    pub(crate) webhook_secrets: Arc<[String]>,
    pub(crate) metrics: PaymentMetrics,
}

impl std::fmt::Debug for Orders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orders")
            .field("payments", &self.payments)
            .field("saga", &self.saga)
            .finish_non_exhaustive()
    }
}

impl Orders {
    /// Orders over a (migrated) database, paying through `payments`.
    pub fn new(pool: Pool, payments: Providers, saga: SagaConfig) -> Self {
        Self {
            pool,
            payments,
            saga: Arc::new(saga),
            webhook_secrets: Arc::new([]),
            metrics: PaymentMetrics::default(),
        }
    }

    /// Accepts card gateway webhooks signed with any of `secrets`.
    #[must_use]
    pub fn with_webhook_secrets(mut self, secrets: Vec<String>) -> Self {
        self.webhook_secrets = secrets.into();
        self
    }

    /// Counts failed refunds and repairs on `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: PaymentMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The database pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

fn transition_failed(err: TransitionError) -> Error {
    match err {
        TransitionError::Query(err) => err.into(),
        // The callers above only ask for moves the life cycle allows from
        // the status they name; anything else is a bug worth a loud error.
        TransitionError::Refused(refused) => Error::Internal(anyhow::anyhow!("{refused}")),
        TransitionError::Moved => Error::Internal(anyhow::anyhow!("the order moved on")),
    }
}
