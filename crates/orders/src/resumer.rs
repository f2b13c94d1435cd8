//! The resumer: drives every order whose payment or refund is unfinished
//! (after a crash, an outage, a timeout) to a definite end, with the same
//! idempotency keys as the first attempt. It runs once at start and then
//! periodically; it claims orders with `FOR UPDATE SKIP LOCKED` and a lease,
//! so replicas share the work and never work on one order at once.

use std::collections::HashMap;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    Orders,
    status::OrderStatus,
    store::{self, OrderRow},
};

/// Runs passes until `shutdown`.
pub async fn run(orders: Orders, shutdown: CancellationToken) {
    loop {
        match orders.resume_once().await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "resumed unfinished orders"),
            Err(err) => tracing::warn!(error = %err, "a resumer pass failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(orders.saga.resume_interval()) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

impl Orders {
    /// One pass: claims a batch of unfinished orders and takes each a step
    /// further. Returns how many it claimed.
    pub async fn resume_once(&self) -> Result<usize, keel_platform::Error> {
        let now = Utc::now();
        let claimed = {
            let mut conn = self.pool.get().await?;
            store::orders::claim_unfinished(&mut conn, now, now + self.saga.lease(), self.saga.resume_batch).await?
        };
        let count = claimed.len();
        for order in claimed {
            let id = order.id;
            let span = resume_span(&order);
            let step = async {
                match order.status {
                    OrderStatus::PendingPayment if order.payment_deadline <= now => self.expire(order).await,
                    OrderStatus::PendingPayment => self.pay(order).await,
                    _ => self.settle(order).await,
                }
            }
            .instrument(span)
            .await;
            if let Err(err) = step {
                // Its lease runs out and a later pass tries again.
                tracing::warn!(order_id = %id, error = %err, "resuming an order failed");
            }
        }
        Ok(count)
    }
}

/// The span of one resumed step (`order.resume`): under the call that placed
/// the order, so the step's calls to accounts and the card gateway, and the
/// events it writes, belong to the order's trace.
fn resume_span(order: &OrderRow) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "order.resume",
        keel.service = crate::SERVICE.name,
        order.id = %order.id,
        order.status = ?order.status,
    );
    if let Some(traceparent) = &order.traceparent {
        let carrier = HashMap::from([("traceparent".to_owned(), traceparent.clone())]);
        keel_platform::telemetry::continue_trace(&span, &carrier);
    }
    span
}
