//! Paying an order (step 2 of CreateOrder, and the resumer's retries): the
//! provider's record prepared and stored, the payment marked CHARGING, the
//! charge made outside any transaction with the key `order:<id>:charge`, and
//! its outcome recorded: PAID with OrderPaid, or (definitely declined)
//! CANCELLED with the stock back. An uncertain outcome holds the order until
//! the resumer's next look.

use diesel_async::AsyncConnection as _;
use keel::events::v1::{OrderPaid, event::Payload};
use keel_platform::{Error, events::outbox, proto::money};

use super::{Orders, SOURCE, cancel::Cancel, claims::Held, transition_failed};
use crate::{
    payment::{Charge, ChargeOutcome, Decline, Prepared, charge_key},
    status::{OrderStatus, PaymentState, Transition},
    store::orders::{Expect, Hold, OrderChanges, OrderRow, TransitionError, transition},
};

/// Where [`Orders::begin_charge`] left an order.
#[derive(Debug)]
pub enum Step {
    /// Marked CHARGING under the caller's claim, which was just renewed:
    /// charge it now.
    Go(OrderRow),
    /// Nothing to charge (now): the order as it is.
    Stop(OrderRow),
}

impl Orders {
    /// Step 2, for an unpaid order the caller holds a claim on: prepares and
    /// starts the charge, charges, and records the outcome. Returns the order
    /// as it is afterwards.
    pub async fn pay(&self, order: OrderRow) -> Result<OrderRow, Error> {
        match self.begin_charge(order).await? {
            Step::Go(order) => {
                let outcome = self
                    .payments
                    .get(order.payment_method)?
                    .charge(&charge_of(&order))
                    .await;
                self.record_charge(order, outcome).await
            }
            Step::Stop(order) => Ok(order),
        }
    }

    /// Everything before the call that may take money, each write under the
    /// caller's claim: the provider's record created and stored (once per
    /// order, and only the stored one is ever charged), then the payment
    /// marked CHARGING. Stops when the claim was lost or the order moved on
    /// (a cancel), so nothing is charged for an order no longer unpaid.
    pub async fn begin_charge(&self, order: OrderRow) -> Result<Step, Error> {
        if order.status != OrderStatus::PendingPayment {
            return Ok(Step::Stop(order));
        }
        let provider = self.payments.get(order.payment_method)?;
        let mut order = order;
        if provider.prepares() && order.payment_state == PaymentState::Unpaid && order.charge_reference.is_none() {
            order = match self.renew(&order).await? {
                Held::Still(order) => order,
                Held::Lost(now) => return Ok(Step::Stop(now)),
            };
            match provider.prepare(&charge_of(&order)).await {
                Prepared::Ready(Some(reference)) => {
                    let changes = OrderChanges {
                        charge_reference: Some(&reference),
                        ..Default::default()
                    };
                    order = match self.write(&order, changes, self.hold()).await? {
                        Held::Still(order) => order,
                        Held::Lost(now) => {
                            // Never stored, so never confirmed: it cannot take money.
                            tracing::info!(order_id = %now.id, reference, "the order moved on while its charge was prepared; the prepared charge is left unconfirmed");
                            return Ok(Step::Stop(now));
                        }
                    };
                }
                Prepared::Ready(None) => {}
                Prepared::Declined(decline) => return self.declined(order, &decline).await.map(Step::Stop),
                Prepared::Uncertain(detail) => {
                    tracing::warn!(order_id = %order.id, detail, "preparing the charge failed; it will be retried");
                    return self.retry_later(order).await.map(Step::Stop);
                }
            }
        }
        let changes = OrderChanges {
            payment_state: (order.payment_state == PaymentState::Unpaid).then_some(PaymentState::Charging),
            ..Default::default()
        };
        match self.write(&order, changes, self.hold()).await? {
            Held::Still(order) if order.payment_state == PaymentState::Charging => Ok(Step::Go(order)),
            Held::Still(order) | Held::Lost(order) => Ok(Step::Stop(order)),
        }
    }

    /// Records how a charge of a PENDING_PAYMENT order ended, under the
    /// caller's claim. When the claim was lost (a cancel took the order
    /// over), nothing is written: the new holder voids the charge and so
    /// learns how it ended.
    pub async fn record_charge(&self, order: OrderRow, outcome: ChargeOutcome) -> Result<OrderRow, Error> {
        match outcome {
            ChargeOutcome::Paid { reference } => {
                let mut conn = self.pool.get().await?;
                let paid = conn
                    .transaction::<_, Error, _>(async |conn| {
                        let changes = OrderChanges {
                            payment_state: Some(PaymentState::Charged),
                            charge_reference: Some(&reference),
                            ..Default::default()
                        };
                        let expect = Expect::of(&order);
                        match transition(conn, &expect, Transition::Pay, changes, Hold::Release).await {
                            Ok(row) => {
                                outbox::enqueue(
                                    conn,
                                    SOURCE,
                                    Payload::OrderPaid(OrderPaid {
                                        order_id: row.id.to_string(),
                                        user_id: row.user_id.to_string(),
                                        amount: Some(money(row.total_minor, &row.currency)),
                                    }),
                                )
                                .await?;
                                Ok(Some(row))
                            }
                            Err(TransitionError::Moved) => Ok(None),
                            Err(err) => Err(transition_failed(err)),
                        }
                    })
                    .await?;
                match paid {
                    Some(row) => Ok(row),
                    None => self.lost(order.id).await,
                }
            }
            ChargeOutcome::Declined(decline) => self.declined(order, &decline).await,
            ChargeOutcome::Pending { .. } => self.retry_later(order).await,
            ChargeOutcome::Uncertain(detail) => {
                tracing::warn!(order_id = %order.id, detail, "the charge's outcome is unknown; it will be asked again with the same key");
                self.retry_later(order).await
            }
        }
    }

    /// The provider definitely took nothing: the order is cancelled with the
    /// decline's reason, under the caller's claim.
    async fn declined(&self, order: OrderRow, decline: &Decline) -> Result<OrderRow, Error> {
        let cancel = Cancel {
            reason: decline.reason(),
            request_id: None,
            declined: true,
            take_over: false,
        };
        match self.cancel_in_one(&order, cancel).await? {
            Some(row) => Ok(row),
            None => self.lost(order.id).await,
        }
    }
}

/// The charge of `order`'s total, with its key and any stored reference.
pub fn charge_of(order: &OrderRow) -> Charge {
    Charge {
        key: charge_key(order.id),
        order_id: order.id,
        user_id: order.user_id,
        amount_minor: order.total_minor,
        currency: order.currency.clone(),
        reference: order.charge_reference.clone(),
        payment_method_id: order.payment_method_id.clone(),
    }
}
