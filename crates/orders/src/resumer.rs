//! The resumer: drives every order whose payment or refund is unfinished
//! (after a crash, an outage, a timeout) to a definite end, with the same
//! idempotency keys as the first attempt. It runs once at start and then
//! periodically; it claims orders with `FOR UPDATE SKIP LOCKED` and a lease,
//! so replicas share the work and never work on one order at once.

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::{Orders, status::OrderStatus, store};

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
            let step = match order.status {
                OrderStatus::PendingPayment if order.payment_deadline <= now => self.expire(order).await,
                OrderStatus::PendingPayment => self.pay(order).await,
                _ => self.settle(order).await,
            };
            if let Err(err) = step {
                // Its lease runs out and a later pass tries again.
                tracing::warn!(order_id = %id, error = %err, "resuming an order failed");
            }
        }
        Ok(count)
    }
}
