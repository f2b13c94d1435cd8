//! Fulfilment: an admin ships a paid order (with OrderShipped) and marks it
//! delivered.

use diesel_async::AsyncConnection as _;
use keel::events::v1::{OrderShipped, event::Payload};
use keel_platform::{Error, events::outbox};
use uuid::Uuid;

use super::{Orders, SOURCE, lookup::OrderView, transition_failed};
use crate::{
    status::{OrderStatus, Transition},
    store::orders::{Expect, Hold, OrderChanges, OrderRow, TransitionError, transition},
};

impl Orders {
    /// ShipOrder: ships the order `id` (see [`Orders::ship`]), answered with
    /// its lines.
    pub async fn ship_order(&self, id: Uuid) -> Result<OrderView, Error> {
        let order = self.find_order(id).await?;
        let shipped = self.ship(order).await?;
        self.view(shipped).await
    }

    /// DeliverOrder: marks the order `id` delivered (see
    /// [`Orders::deliver`]), answered with its lines.
    pub async fn deliver_order(&self, id: Uuid) -> Result<OrderView, Error> {
        let order = self.find_order(id).await?;
        let delivered = self.deliver(order).await?;
        self.view(delivered).await
    }

    /// PAID -> SHIPPED (with OrderShipped); an order already SHIPPED is
    /// returned as it is.
    pub async fn ship(&self, order: OrderRow) -> Result<OrderRow, Error> {
        self.advance(order, Transition::Ship).await
    }

    /// SHIPPED -> DELIVERED; an order already DELIVERED is returned as it is.
    pub async fn deliver(&self, order: OrderRow) -> Result<OrderRow, Error> {
        self.advance(order, Transition::Deliver).await
    }

    async fn advance(&self, order: OrderRow, step: Transition) -> Result<OrderRow, Error> {
        let mut order = order;
        for _ in 0..3 {
            let from = order.status;
            let to = match from.apply(step) {
                Ok(to) => to,
                // Asking again for the status it is already in is a retry.
                Err(_)
                    if matches!(
                        (from, step),
                        (OrderStatus::Shipped, Transition::Ship) | (OrderStatus::Delivered, Transition::Deliver)
                    ) =>
                {
                    return Ok(order);
                }
                Err(refused) => {
                    return Err(Error::failed_precondition(
                        "INVALID_ORDER_STATUS",
                        format!("the order is {}: it cannot be {}", refused.from, past(step)),
                    )
                    .with_metadata("status", refused.from.name()));
                }
            };
            let mut conn = self.pool.get().await?;
            let moved = conn
                .transaction::<_, Error, _>(async |conn| {
                    match transition(conn, &Expect::of(&order), step, OrderChanges::default(), Hold::Release).await {
                        Ok(row) => {
                            if to == OrderStatus::Shipped {
                                outbox::enqueue(
                                    conn,
                                    SOURCE,
                                    Payload::OrderShipped(OrderShipped {
                                        order_id: row.id.to_string(),
                                        user_id: row.user_id.to_string(),
                                    }),
                                )
                                .await?;
                            }
                            Ok(Some(row))
                        }
                        Err(TransitionError::Moved) => Ok(None),
                        Err(err) => Err(transition_failed(err)),
                    }
                })
                .await?;
            match moved {
                Some(row) => return Ok(row),
                None => order = self.reload(order.id).await?,
            }
        }
        Err(Error::aborted("ORDER_CHANGING", "the order kept changing; retry"))
    }
}

fn past(step: Transition) -> &'static str {
    match step {
        Transition::Pay => "paid",
        Transition::Ship => "shipped",
        Transition::Deliver => "delivered",
        Transition::Cancel => "cancelled",
    }
}
