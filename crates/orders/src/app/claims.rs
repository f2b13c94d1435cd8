//! Claims on orders: taking one, and writing under it. Every write is a
//! compare-and-set on the order as its worker last saw it, fencing token
//! included, and renews the hold (see docs/architecture.md, "Payments under
//! concurrency").

use keel_platform::Error;
use uuid::Uuid;

use super::Orders;
use crate::store::{
    self,
    orders::{Expect, Hold, OrderChanges, OrderRow},
};

/// The outcome of a write under a claim.
pub(super) enum Held {
    /// Written; the caller still holds the order.
    Still(OrderRow),
    /// Not written: the order moved on or another worker claimed it. The
    /// order as it is now.
    Lost(OrderRow),
}

impl Orders {
    /// Claims the order if its payment or refund is unfinished and nobody
    /// holds it; the row returned carries the caller's fencing token.
    pub async fn claim(&self, id: Uuid) -> Result<Option<OrderRow>, Error> {
        let mut conn = self.pool.get().await?;
        Ok(store::orders::claim(&mut conn, id, self.saga.lease()).await?)
    }

    /// Takes the order over from whoever holds it, if its payment or refund
    /// is unfinished: for news from a partner (a webhook) that should not
    /// wait for a hold to run out. The previous holder stops at its next
    /// write.
    pub async fn take_over(&self, id: Uuid) -> Result<Option<OrderRow>, Error> {
        let mut conn = self.pool.get().await?;
        Ok(store::orders::take_over(&mut conn, id, self.saga.lease()).await?)
    }

    /// How long a worker holds an order from its latest write.
    pub(super) fn hold(&self) -> Hold {
        Hold::For(self.saga.lease())
    }

    /// Writes `changes` under the caller's claim, as `order` shows it.
    pub(super) async fn write(&self, order: &OrderRow, changes: OrderChanges<'_>, hold: Hold) -> Result<Held, Error> {
        let written = {
            let mut conn = self.pool.get().await?;
            store::orders::update(&mut conn, &Expect::of(order), changes, hold).await?
        };
        match written {
            Some(row) => Ok(Held::Still(row)),
            None => self.lost(order.id).await.map(Held::Lost),
        }
    }

    /// Renews the caller's claim before a call to a partner: a worker that
    /// lost it makes no further call.
    pub(super) async fn renew(&self, order: &OrderRow) -> Result<Held, Error> {
        self.write(order, OrderChanges::default(), self.hold()).await
    }

    /// Leaves the order held until the resumer's next look, so an outage is
    /// not hammered: whoever claims it then tries again with the same keys.
    pub(super) async fn retry_later(&self, order: OrderRow) -> Result<OrderRow, Error> {
        match self
            .write(&order, OrderChanges::default(), Hold::For(self.saga.resume_interval()))
            .await?
        {
            Held::Still(order) | Held::Lost(order) => Ok(order),
        }
    }

    /// The order as it is now, for a worker whose claim was lost: whoever
    /// holds it now finishes the work.
    pub(super) async fn lost(&self, id: Uuid) -> Result<OrderRow, Error> {
        tracing::debug!(order_id = %id, "the order moved on or was claimed by another worker; leaving it to them");
        self.reload(id).await
    }

    /// The order as stored now.
    pub async fn reload(&self, id: Uuid) -> Result<OrderRow, Error> {
        let mut conn = self.pool.get().await?;
        store::orders::find(&mut conn, id)
            .await?
            .ok_or_else(|| Error::not_found("order"))
    }
}
