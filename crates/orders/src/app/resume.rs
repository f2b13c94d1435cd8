//! The resumer: drives every order whose payment or refund is unfinished
//! (after a crash, an outage, a timeout) to a definite end, with the same
//! idempotency keys as the first attempt. It runs once at start and then
//! periodically. Each pass runs a few workers; each claims one order at a
//! time (`FOR UPDATE SKIP LOCKED`, bumping its fencing token) and takes it a
//! step further, until none is left: replicas share the work, a backlog
//! drains as fast as the partners answer, and no claim outlives the one
//! order it covers.

use std::collections::HashMap;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::Orders;
use crate::{
    status::OrderStatus,
    store::{self, orders::OrderRow},
};

/// Runs passes until `shutdown`.
pub async fn run(orders: Orders, shutdown: CancellationToken) {
    loop {
        match orders.resume_once(&shutdown).await {
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
    /// One pass: workers claim unfinished orders one by one and take each a
    /// step further, until none is free or `shutdown`. Returns how many
    /// steps were taken.
    pub async fn resume_once(&self, shutdown: &CancellationToken) -> Result<usize, keel_platform::Error> {
        let workers = (0..self.saga.resume_batch).map(|_| self.drain(shutdown));
        let mut resumed = 0;
        for worker in futures::future::join_all(workers).await {
            resumed += worker?;
        }
        Ok(resumed)
    }

    async fn drain(&self, shutdown: &CancellationToken) -> Result<usize, keel_platform::Error> {
        let mut resumed = 0;
        while !shutdown.is_cancelled() {
            let claimed = {
                let mut conn = self.pool.get().await?;
                store::orders::claim_next(&mut conn, self.saga.lease()).await?
            };
            let Some(order) = claimed else { break };
            resumed += 1;
            let id = order.id;
            let span = resume_span(&order);
            if let Err(err) = self.resume(order).instrument(span).await {
                // Its hold runs out and a later claim tries again.
                tracing::warn!(order_id = %id, error = %err, "resuming an order failed");
            }
        }
        Ok(resumed)
    }

    /// One step for an order the caller has just claimed.
    async fn resume(&self, order: OrderRow) -> Result<OrderRow, keel_platform::Error> {
        match order.status {
            OrderStatus::PendingPayment if order.payment_deadline <= Utc::now() => self.expire(order).await,
            OrderStatus::PendingPayment => self.pay(order).await,
            _ => self.settle(order).await,
        }
    }
}

/// The span of one resumed step (`order.resume`): under the call that placed
/// the order, so the step's calls to accounts and the card gateway, and the
/// events it writes, belong to the order's trace.
fn resume_span(order: &OrderRow) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "order.resume",
        keel.service = crate::domain::NAME,
        order.id = %order.id,
        order.status = ?order.status,
    );
    if let Some(traceparent) = &order.traceparent {
        let carrier = HashMap::from([("traceparent".to_owned(), traceparent.clone())]);
        keel_platform::serve::telemetry::continue_trace(&span, &carrier);
    }
    span
}
