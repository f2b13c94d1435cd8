//! What orders does, apart from how it is called: the service's state
//! ([`Orders`]) and its operations, one file per capability. The gRPC
//! adapters in `service/` call these, one operation per call; nothing here
//! knows gRPC's types.
//!
//! - the catalog (`catalog`): [`create_product`](Orders::create_product),
//!   [`update_product`](Orders::update_product),
//!   [`adjust_stock`](Orders::adjust_stock) and the reads;
//! - [`place`](Orders::place): reserve, snapshot and insert an order
//!   ([`create_order`](Orders::create_order) places and pays it);
//! - [`pay`](Orders::pay): charge it and record the outcome;
//! - [`cancel`](Orders::cancel), [`expire`](Orders::expire) and
//!   [`settle`](Orders::settle): cancel it and give back what is owed;
//! - [`ship`](Orders::ship) and [`deliver`](Orders::deliver);
//! - reading orders for a caller (`lookup`): [`get_order`](Orders::get_order)
//!   and [`list_orders`](Orders::list_orders);
//! - the card gateway's webhook (`webhooks`):
//!   [`handle_card_webhook`](Orders::handle_card_webhook);
//! - [`resume`]: the worker that finishes what a crash or an outage left;
//! - [`reconcile`]: orders against the money their providers hold.
//!
//! Every step on an order's payment runs under a claim whose fencing token
//! each write checks (`claims`).

mod cancel;
mod catalog;
mod claims;
mod fulfil;
mod lookup;
mod pay;
mod place;
pub mod reconcile;
pub mod resume;
mod webhooks;

use std::sync::Arc;

use keel_platform::{
    Error,
    db::{Pool, paging},
};
use secrecy::SecretString;
use uuid::Uuid;

pub use catalog::{AddProduct, AdjustStock, UpdateProduct};
pub use lookup::{ListOrders, OrderView};
pub use pay::{Step, charge_of};
pub use place::{Line, PlaceOrder, Placed};

use crate::{config::SagaConfig, metrics::PaymentMetrics, payment::Providers, store::orders::TransitionError};

/// The event source name of orders: its service name, which is also the
/// client id its relay's tokens carry.
pub const SOURCE: &str = crate::domain::NAME;

/// The orders service's state: its database, its payment providers and how
/// the saga paces itself. Clones share it.
#[derive(Debug, Clone)]
pub struct Orders {
    // Private to `app`: the gRPC adapters reach the database and the
    // providers only through the operations.
    pool: Pool,
    payments: Providers,
    saga: Arc<SagaConfig>,
    /// The card gateway's webhook signing secrets.
    webhook_secrets: Arc<[SecretString]>,
    metrics: PaymentMetrics,
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
    pub fn with_webhook_secrets(mut self, secrets: Vec<SecretString>) -> Self {
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

/// One page of a listing, and the token of the page after it.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The page's entries.
    pub items: Vec<T>,
    /// The next page's token; empty on the last page.
    pub next_page_token: String,
}

impl<T> Page<T> {
    /// The page of `rows` fetched with `limit + 1` (see [`paging::page`]),
    /// whose token carries the `id` of its last entry.
    fn of(rows: Vec<T>, limit: i64, id: impl Fn(&T) -> Uuid) -> Self {
        let (items, next_page_token) = paging::page(rows, limit, |row| paging::encode_token(id(row)));
        Self { items, next_page_token }
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
