//! CreateOrder as a persisted saga, and its compensations. Every step runs
//! under a claim on the order whose fencing token each write checks (see
//! docs/architecture.md, "Payments under concurrency").
//!
//! 1. [`Orders::place`]: one transaction reserves every line's units (or
//!    none), snapshots names and prices, inserts the order PENDING_PAYMENT
//!    claimed by the caller, and writes OrderPlaced.
//! 2. [`Orders::pay`]: the provider's record prepared and stored, the payment
//!    marked CHARGING, then the charge, outside any transaction, with the key
//!    `order:<id>:charge`; then one transaction records how it ended: PAID
//!    and OrderPaid, or (definitely declined) stock released, CANCELLED and
//!    OrderCancelled. An uncertain outcome changes nothing: the order is held
//!    until the resumer's next look, which tries again with the same key.
//! 3. [`Orders::cancel`] and [`Orders::expire`] cancel in one transaction
//!    (stock released) and note what is still owed: a refund of a charged
//!    order, or for one whose charge is under way, voiding it. A cancel takes
//!    the order over from whoever works on it. [`Orders::settle`] voids or
//!    refunds outside the transaction, with `order:<id>:refund`; it too is
//!    retried by the resumer until it ends.

use chrono::Utc;
use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use keel::{
    common::v1::Money,
    events::v1::{OrderCancelled, OrderPaid, OrderPlaced, OrderShipped, event::Payload},
};
use keel_platform::{Error, outbox};
use uuid::Uuid;

use crate::{
    Orders,
    domain::{MAX_TOTAL_MINOR, RequestId},
    payment::{Charge, ChargeOutcome, Decline, Prepared, Refund, RefundOutcome, VoidOutcome, charge_key, refund_key},
    service::SOURCE,
    status::{OrderStatus, PaymentMethod, PaymentState, RefundState, Transition},
    store::{
        self, ItemRow, NewItem, NewOrder, OrderChanges, OrderRow,
        orders::{Expect, Hold, TransitionError, transition},
        products,
    },
};

/// Why an order was cancelled, as stored and as clients see it.
pub mod reasons {
    /// The buyer (or an admin) cancelled it.
    pub const CANCELLED_ON_REQUEST: &str = "CANCELLED_ON_REQUEST";
    /// It stayed unpaid past the payment deadline.
    pub const PAYMENT_DEADLINE_PASSED: &str = "PAYMENT_DEADLINE_PASSED";
    /// The balance did not cover it.
    pub const INSUFFICIENT_FUNDS: &str = "INSUFFICIENT_FUNDS";
    /// The payment provider declined it.
    pub const PAYMENT_DECLINED: &str = "PAYMENT_DECLINED";

    /// The sentence OrderCancelled carries for `reason`.
    pub fn describe(reason: &str) -> &'static str {
        match reason {
            CANCELLED_ON_REQUEST => "cancelled on request",
            PAYMENT_DEADLINE_PASSED => "not paid before the payment deadline",
            INSUFFICIENT_FUNDS => "the balance did not cover the total",
            PAYMENT_DECLINED => "the payment was declined",
            _ => "cancelled",
        }
    }

    /// The reason itself when it says the payment failed: CreateOrder answers
    /// such an order with that error, to the first call and every retry.
    pub fn payment_failure(reason: &str) -> Option<&'static str> {
        [INSUFFICIENT_FUNDS, PAYMENT_DECLINED]
            .into_iter()
            .find(|known| *known == reason)
    }
}

/// One requested line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// The product.
    pub product_id: Uuid,
    /// Units, 1 to 1000.
    pub quantity: i32,
}

/// A CreateOrder, read and checked.
#[derive(Debug, Clone)]
pub struct PlaceOrder {
    /// The buyer.
    pub user_id: Uuid,
    /// The buyer's idempotency key.
    pub request_id: RequestId,
    /// The lines, each product once, in the order given.
    pub lines: Vec<Line>,
    /// How it is paid.
    pub method: PaymentMethod,
    /// The buyer's payment method at the card gateway (EXTERNAL only).
    pub payment_method_id: Option<String>,
}

/// Where [`Orders::begin_charge`] left an order.
#[derive(Debug)]
pub enum Step {
    /// Marked CHARGING under the caller's claim, which was just renewed:
    /// charge it now.
    Go(OrderRow),
    /// Nothing to charge (now): the order as it is.
    Stop(OrderRow),
}

/// The outcome of a write under a claim.
enum Held {
    /// Written; the caller still holds the order.
    Still(OrderRow),
    /// Not written: the order moved on or another worker claimed it. The
    /// order as it is now.
    Lost(OrderRow),
}

/// How an order is being cancelled.
#[derive(Debug, Clone, Copy)]
struct Cancel<'a> {
    reason: &'static str,
    request_id: Option<&'a str>,
    /// The provider refused the charge.
    declined: bool,
    /// A buyer's cancel: it takes the order over from any worker.
    take_over: bool,
}

/// What [`Orders::place`] found or made.
#[derive(Debug)]
pub enum Placed {
    /// A new order, claimed by the caller, which should now pay it.
    New(OrderRow),
    /// The order an earlier call with the same key placed.
    Existing(OrderRow),
}

impl Orders {
    /// Step 1: reserves, snapshots and inserts the order, once per (buyer,
    /// key).
    pub async fn place(&self, order: &PlaceOrder) -> Result<Placed, Error> {
        let now = Utc::now();
        let deadline = now + self.saga.payment_deadline();
        let lease_until = now + self.saga.lease();
        // Kept with the order, so its later steps join this call's trace.
        let trace = keel_platform::telemetry::current_trace_context();
        let mut conn = self.pool.get().await?;
        conn.transaction::<_, Error, _>(async |conn| {
            // Calls with one key take turns, so a retry racing the first call
            // waits for it and then finds its order (instead of competing for
            // the same units).
            store::orders::lock_key(conn, &format!("order:{}:{}", order.user_id, order.request_id.as_str())).await?;
            if let Some(existing) =
                store::orders::find_by_request(conn, order.user_id, order.request_id.as_str()).await?
            {
                let items = store::orders::items(conn, &[existing.id]).await?;
                same_request(order, &existing, &items)?;
                return Ok(Placed::Existing(existing));
            }
            // Units are taken in product order, so two orders sharing
            // products never wait on each other in a cycle.
            let mut by_product = order.lines.clone();
            by_product.sort_by_key(|line| line.product_id);
            let mut reserved = Vec::with_capacity(by_product.len());
            for line in &by_product {
                match products::move_stock(conn, line.product_id, -i64::from(line.quantity)).await? {
                    Some(product) => reserved.push(product),
                    None => return Err(not_reservable(conn, line.product_id).await),
                }
            }
            let currency = reserved.first().map(|p| p.currency.clone()).unwrap_or_default();
            if reserved.iter().any(|p| p.currency != currency) {
                return Err(Error::failed_precondition(
                    "CURRENCY_MISMATCH",
                    "the products are priced in different currencies; order them separately",
                ));
            }
            let id = Uuid::now_v7();
            let mut items = Vec::with_capacity(order.lines.len());
            let mut total: i64 = 0;
            for (position, line) in order.lines.iter().enumerate() {
                let product = reserved
                    .iter()
                    .find(|p| p.id == line.product_id)
                    .ok_or_else(|| anyhow::anyhow!("product {} was reserved but not read", line.product_id))?;
                total = product
                    .price_minor
                    .checked_mul(i64::from(line.quantity))
                    .and_then(|line_total| total.checked_add(line_total))
                    .filter(|total| *total <= MAX_TOTAL_MINOR)
                    .ok_or_else(|| {
                        Error::failed_precondition(
                            "TOTAL_TOO_LARGE",
                            format!("an order's total is at most {MAX_TOTAL_MINOR} minor units"),
                        )
                    })?;
                items.push(NewItem {
                    order_id: id,
                    position: i32::try_from(position).map_err(anyhow::Error::from)?,
                    product_id: product.id,
                    product_name: &product.name,
                    quantity: line.quantity,
                    unit_price_minor: product.price_minor,
                    currency: &product.currency,
                });
            }
            let row = store::orders::insert(
                conn,
                NewOrder {
                    id,
                    user_id: order.user_id,
                    request_id: order.request_id.as_str(),
                    payment_method: order.method,
                    total_minor: total,
                    currency: &currency,
                    payment_deadline: deadline,
                    lease_until: Some(lease_until),
                    payment_method_id: order.payment_method_id.as_deref(),
                    traceparent: trace.get("traceparent").map(String::as_str),
                    claim: 1,
                },
                &items,
            )
            .await?;
            outbox::enqueue(
                conn,
                SOURCE,
                Payload::OrderPlaced(OrderPlaced {
                    order_id: row.id.to_string(),
                    user_id: row.user_id.to_string(),
                    total: Some(money(row.total_minor, &row.currency)),
                }),
            )
            .await?;
            Ok(Placed::New(row))
        })
        .await
    }

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

    /// Cancels the order as `order` shows it, in one transaction: the
    /// status, the payment (voided if nothing was sent; declined if the
    /// provider refused), the stock back, and what is owed: nothing, a
    /// refund, or (the charge's outcome unknown) finding out first.
    /// OrderCancelled goes with it unless that is still unknown; then it
    /// goes when [`Orders::settle`] learns the answer. None when the order
    /// was no longer as shown.
    async fn cancel_in_one(&self, order: &OrderRow, cancel: Cancel<'_>) -> Result<Option<OrderRow>, Error> {
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

    /// How long a worker holds an order from its latest write.
    fn hold(&self) -> Hold {
        Hold::For(self.saga.lease())
    }

    /// Writes `changes` under the caller's claim, as `order` shows it.
    async fn write(&self, order: &OrderRow, changes: OrderChanges<'_>, hold: Hold) -> Result<Held, Error> {
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
    async fn renew(&self, order: &OrderRow) -> Result<Held, Error> {
        self.write(order, OrderChanges::default(), self.hold()).await
    }

    /// Leaves the order held until the resumer's next look, so an outage is
    /// not hammered: whoever claims it then tries again with the same keys.
    async fn retry_later(&self, order: OrderRow) -> Result<OrderRow, Error> {
        match self
            .write(&order, OrderChanges::default(), Hold::For(self.saga.resume_interval()))
            .await?
        {
            Held::Still(order) | Held::Lost(order) => Ok(order),
        }
    }

    /// The order as it is now, for a worker whose claim was lost: whoever
    /// holds it now finishes the work.
    async fn lost(&self, id: Uuid) -> Result<OrderRow, Error> {
        tracing::debug!(order_id = %id, "the order moved on or was claimed by another worker; leaving it to them");
        self.reload(id).await
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

    /// The order as stored now.
    pub async fn reload(&self, id: Uuid) -> Result<OrderRow, Error> {
        let mut conn = self.pool.get().await?;
        store::orders::find(&mut conn, id)
            .await?
            .ok_or_else(|| Error::not_found("order"))
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

fn money(amount_minor: i64, currency: &str) -> Money {
    Money {
        amount_minor,
        currency_code: currency.to_owned(),
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

fn not_cancellable(status: OrderStatus) -> Error {
    Error::failed_precondition(
        "ORDER_NOT_CANCELLABLE",
        format!("the order is {status}: only unpaid or paid orders can be cancelled"),
    )
    .with_metadata("status", status.name())
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

/// Why `product_id`'s units could not be reserved: it is unknown, or short.
async fn not_reservable(conn: &mut AsyncPgConnection, product_id: Uuid) -> Error {
    match products::find(conn, product_id).await {
        Ok(None) => Error::client(tonic::Code::NotFound, "PRODUCT_NOT_FOUND", "no such product")
            .with_metadata("product_id", product_id.to_string()),
        Ok(Some(product)) => Error::failed_precondition(
            "INSUFFICIENT_STOCK",
            format!("only {} units of {} are in stock", product.stock_quantity, product.name),
        )
        .with_metadata("product_id", product_id.to_string()),
        Err(err) => err.into(),
    }
}

/// A retry must ask for what the first call asked for.
fn same_request(order: &PlaceOrder, existing: &OrderRow, items: &[ItemRow]) -> Result<(), Error> {
    let same_lines = items.len() == order.lines.len()
        && items
            .iter()
            .zip(&order.lines)
            .all(|(item, line)| item.product_id == line.product_id && item.quantity == line.quantity);
    if same_lines && existing.payment_method == order.method {
        Ok(())
    } else {
        Err(Error::already_exists(
            "REQUEST_ID_REUSED",
            "this request_id placed a different order; use a new one",
        ))
    }
}
