//! Cancelling: by the buyer or an admin (CancelOrder), when the payment
//! deadline passes, or when the provider declines. One transaction cancels
//! (stock released) and notes what is still owed: a refund of a charged
//! order, or, for one whose charge is under way, voiding it. A cancel takes
//! the order over from whoever works on it. [`Orders::settle`] then voids
//! or refunds outside the transaction, with `order:<id>:refund`; the
//! resumer retries it until it ends.

use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use keel::events::v1::{OrderCancelled, event::Payload};
use keel_platform::{Error, auth::principal::UserPrincipal, events::outbox};
use uuid::Uuid;

use super::{Orders, SOURCE, charge_of, claims::Held, lookup::OrderView, transition_failed};
use crate::{
    domain::{RequestId, reasons},
    payment::{Refund, RefundOutcome, VoidOutcome, refund_key},
    status::{OrderStatus, PaymentState, RefundState, Transition},
    store::{
        self,
        orders::{Expect, Hold, OrderChanges, OrderRow, TransitionError, transition},
        products,
    },
};

/// How an order is being cancelled.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cancel<'a> {
    pub(super) reason: &'static str,
    pub(super) request_id: Option<&'a str>,
    /// The provider refused the charge.
    pub(super) declined: bool,
    /// A buyer's cancel: it takes the order over from any worker.
    pub(super) take_over: bool,
}

impl Orders {
    /// Cancels the order as `order` shows it, in one transaction: the
    /// status, the payment (voided if nothing was sent; declined if the
    /// provider refused), the stock back, and what is owed: nothing, a
    /// refund, or (the charge's outcome unknown) finding out first.
    /// OrderCancelled goes with it unless that is still unknown; then it
    /// goes when [`Orders::settle`] learns the answer. None when the order
    /// was no longer as shown.
    pub(super) async fn cancel_in_one(&self, order: &OrderRow, cancel: Cancel<'_>) -> Result<Option<OrderRow>, Error> {
        let payment = match order.payment_state {
            _ if cancel.declined => PaymentState::Declined,
            PaymentState::Unpaid => PaymentState::Voided,
            state => state,
        };
        let refund = match payment {
            PaymentState::Charging => RefundState::Unknown,
            PaymentState::Charged => RefundState::Due,
            PaymentState::Unpaid | PaymentState::Declined | PaymentState::Voided => RefundState::NotNeeded,
        };
        // Whoever cancels with something still owed settles it next, holding
        // the order: a cancel takes it over from a worker still at it, which
        // then writes nothing more.
        let hold = match (refund, cancel.take_over) {
            (RefundState::NotNeeded, _) => Hold::Release,
            (_, true) => Hold::TakeOver(self.saga.lease()),
            (_, false) => self.hold(),
        };
        let mut conn = self.pool.get().await?;
        conn.transaction::<_, Error, _>(async |conn| {
            let changes = OrderChanges {
                payment_state: (payment != order.payment_state).then_some(payment),
                refund_state: Some(refund),
                cancel_reason: Some(cancel.reason),
                cancel_request_id: cancel.request_id,
                ..Default::default()
            };
            let row = match transition(conn, &Expect::of(order), Transition::Cancel, changes, hold).await {
                Ok(row) => row,
                Err(TransitionError::Moved) => return Ok(None),
                Err(err) => return Err(transition_failed(err)),
            };
            let mut items = store::orders::items(conn, &[row.id]).await?;
            items.sort_by_key(|item| item.product_id);
            for item in &items {
                products::move_stock(conn, item.product_id, i64::from(item.quantity))
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("product {} of order {} is gone", item.product_id, row.id))?;
            }
            if refund != RefundState::Unknown {
                announce_cancel(conn, &row).await?;
            }
            Ok(Some(row))
        })
        .await
    }

    /// CancelOrder: cancels the order `id` if `caller` may see it (see
    /// [`Orders::cancel`]), answered with its lines.
    pub async fn cancel_order(
        &self,
        caller: &UserPrincipal,
        id: Uuid,
        request_id: &RequestId,
    ) -> Result<OrderView, Error> {
        let order = self.visible_order(caller, id).await?;
        let cancelled = self.cancel(order, request_id).await?;
        self.view(cancelled).await
    }

    /// CancelOrder's work, after the caller's right to the order is checked:
    /// PENDING_PAYMENT or PAID becomes CANCELLED, whoever is working on the
    /// order meanwhile, then whatever is owed is settled. A retry with the
    /// same `request_id` returns the cancelled order.
    pub async fn cancel(&self, order: OrderRow, request_id: &RequestId) -> Result<OrderRow, Error> {
        let mut order = order;
        // A racing change (paid, shipped, claimed) makes the first attempt
        // miss; look again, a few times at most.
        for _ in 0..3 {
            match order.status {
                OrderStatus::PendingPayment | OrderStatus::Paid => {}
                OrderStatus::Cancelled if order.cancel_request_id.as_deref() == Some(request_id.as_str()) => {
                    return match self.claim(order.id).await? {
                        Some(held) => self.settle(held).await,
                        None => Ok(order),
                    };
                }
                status => return Err(not_cancellable(status)),
            }
            let cancel = Cancel {
                reason: reasons::CANCELLED_ON_REQUEST,
                request_id: Some(request_id.as_str()),
                declined: false,
                take_over: true,
            };
            match self.cancel_in_one(&order, cancel).await? {
                Some(cancelled) => return self.settle(cancelled).await,
                None => order = self.reload(order.id).await?,
            }
        }
        Err(Error::aborted(
            "ORDER_CHANGING",
            "the order kept changing while it was being cancelled; retry",
        ))
    }

    /// Cancels an unpaid order past its payment deadline (the caller holds
    /// it), then settles it.
    pub async fn expire(&self, order: OrderRow) -> Result<OrderRow, Error> {
        let cancel = Cancel {
            reason: reasons::PAYMENT_DEADLINE_PASSED,
            request_id: None,
            declined: false,
            take_over: false,
        };
        match self.cancel_in_one(&order, cancel).await? {
            Some(cancelled) => self.settle(cancelled).await,
            None => self.lost(order.id).await,
        }
    }

    /// Settles what a cancelled order the caller holds still owes: voids a
    /// charge whose outcome was unknown (learning whether it went through),
    /// and refunds a charge in full. An uncertain step is left for the
    /// resumer; a refund refused for good is parked as FAILED for an
    /// operator. Other orders are returned as they are.
    pub async fn settle(&self, order: OrderRow) -> Result<OrderRow, Error> {
        if order.status != OrderStatus::Cancelled {
            return Ok(order);
        }
        let provider = self.payments.get(order.payment_method)?;
        let mut order = order;
        if order.refund_state == RefundState::Unknown {
            order = match self.renew(&order).await? {
                Held::Still(order) => order,
                Held::Lost(now) => return Ok(now),
            };
            let (payment, refund, reference) = match provider.void(&charge_of(&order)).await {
                VoidOutcome::NotCharged => (PaymentState::Voided, RefundState::NotNeeded, None),
                VoidOutcome::Charged { reference } => (PaymentState::Charged, RefundState::Due, Some(reference)),
                VoidOutcome::Refunded { charge, refund } => {
                    tracing::info!(order_id = %order.id, charge, refund, "the cancelled order had been charged; refunded");
                    (PaymentState::Charged, RefundState::Done, Some(charge))
                }
                VoidOutcome::Uncertain(detail) => {
                    tracing::warn!(order_id = %order.id, detail, "whether the cancelled order was charged is not known yet");
                    return self.retry_later(order).await;
                }
            };
            let hold = if refund == RefundState::Due {
                self.hold()
            } else {
                Hold::Release
            };
            let mut conn = self.pool.get().await?;
            let resolved = conn
                .transaction::<_, Error, _>(async |conn| {
                    let changes = OrderChanges {
                        payment_state: Some(payment),
                        charge_reference: reference.as_deref(),
                        refund_state: Some(refund),
                        ..Default::default()
                    };
                    let row = store::orders::update(conn, &Expect::of(&order), changes, hold).await?;
                    if let Some(row) = &row {
                        announce_cancel(conn, row).await?;
                    }
                    Ok(row)
                })
                .await?;
            order = match resolved {
                Some(row) => row,
                None => return self.lost(order.id).await,
            };
        }
        if order.refund_state == RefundState::Due {
            order = match self.renew(&order).await? {
                Held::Still(order) => order,
                Held::Lost(now) => return Ok(now),
            };
            let charge_reference = order
                .charge_reference
                .clone()
                .ok_or_else(|| anyhow::anyhow!("order {} owes a refund of no known charge", order.id))?;
            let refund = Refund {
                key: refund_key(order.id),
                order_id: order.id,
                user_id: order.user_id,
                amount_minor: order.total_minor,
                currency: order.currency.clone(),
                charge_reference,
            };
            let state = match provider.refund(&refund).await {
                RefundOutcome::Refunded { reference } => {
                    tracing::info!(order_id = %order.id, refund = reference, "refunded");
                    RefundState::Done
                }
                RefundOutcome::Refused(detail) => {
                    tracing::error!(order_id = %order.id, detail, "the refund was refused for good; an operator must look (ListOrders with refund_state FAILED)");
                    self.metrics.refund_failed();
                    RefundState::Failed
                }
                RefundOutcome::Uncertain(detail) => {
                    tracing::warn!(order_id = %order.id, detail, "the refund did not complete; it will be retried with the same key");
                    return self.retry_later(order).await;
                }
            };
            let changes = OrderChanges {
                refund_state: Some(state),
                ..Default::default()
            };
            order = match self.write(&order, changes, Hold::Release).await? {
                Held::Still(order) | Held::Lost(order) => order,
            };
        }
        Ok(order)
    }
}

/// Writes OrderCancelled for `row`, once what it owes is known: `refunded`
/// says whether its charge is (being) given back.
async fn announce_cancel(conn: &mut AsyncPgConnection, row: &OrderRow) -> Result<(), Error> {
    let reason = row.cancel_reason.as_deref().unwrap_or_default();
    outbox::enqueue(
        conn,
        SOURCE,
        Payload::OrderCancelled(OrderCancelled {
            order_id: row.id.to_string(),
            user_id: row.user_id.to_string(),
            reason: reasons::describe(reason).to_owned(),
            refunded: matches!(
                row.refund_state,
                RefundState::Due | RefundState::Done | RefundState::Failed
            ),
        }),
    )
    .await?;
    Ok(())
}

fn not_cancellable(status: OrderStatus) -> Error {
    Error::failed_precondition(
        "ORDER_NOT_CANCELLABLE",
        format!("the order is {status}: only unpaid or paid orders can be cancelled"),
    )
    .with_metadata("status", status.name())
}
