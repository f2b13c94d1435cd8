//! CreateOrder as a persisted saga, and its compensations.
//!
//! 1. [`Orders::place`]: one transaction reserves every line's units (or
//!    none), snapshots names and prices, inserts the order PENDING_PAYMENT
//!    leased to the caller, and writes OrderPlaced.
//! 2. [`Orders::pay`]: the charge, outside any transaction, with the key
//!    `order:<id>:charge`; then one transaction records how it ended: PAID
//!    and OrderPaid, or (definitely declined) stock released, CANCELLED and
//!    OrderCancelled. An uncertain outcome changes nothing: the lease runs
//!    out and the resumer tries again with the same key.
//! 3. [`Orders::cancel`] and [`Orders::expire`] cancel in one transaction
//!    (stock released, OrderCancelled) and note what is still owed: a refund
//!    of a paid order, or for an unpaid one, voiding a charge that may be in
//!    flight. [`Orders::settle`] does that outside the transaction, with
//!    `order:<id>:refund`; it too is retried by the resumer until it ends.

use chrono::{DateTime, Utc};
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
    payment::{Charge, ChargeOutcome, Refund, RefundOutcome, charge_key, refund_key},
    service::SOURCE,
    status::{OrderStatus, PaymentMethod, RefundState, Transition},
    store::{
        self, ItemRow, NewItem, NewOrder, OrderChanges, OrderRow,
        orders::{TransitionError, transition},
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

/// What [`Orders::place`] found or made.
#[derive(Debug)]
pub enum Placed {
    /// A new order, leased to the caller, which should now pay it.
    New(OrderRow),
    /// The order an earlier call with the same key placed.
    Existing(OrderRow),
}

impl Orders {
    fn lease_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + self.saga.lease()
    }

    /// Step 1: reserves, snapshots and inserts the order, once per (buyer,
    /// key).
    pub async fn place(&self, order: &PlaceOrder) -> Result<Placed, Error> {
        let now = Utc::now();
        let deadline = now + self.saga.payment_deadline();
        let lease_until = self.lease_until(now);
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

    /// Takes the order's lease if nobody holds it and it is still unpaid.
    pub async fn claim(&self, order: &OrderRow) -> Result<Option<OrderRow>, Error> {
        let now = Utc::now();
        let mut conn = self.pool.get().await?;
        Ok(store::orders::claim(
            &mut conn,
            order.id,
            OrderStatus::PendingPayment,
            now,
            self.lease_until(now),
        )
        .await?)
    }

    /// Step 2, for an unpaid order whose lease the caller holds: charges it
    /// and records the outcome. Returns the order as it is afterwards.
    pub async fn pay(&self, order: OrderRow) -> Result<OrderRow, Error> {
        let (order, outcome) = self.charge(order).await?;
        self.record_charge(order, outcome).await
    }

    /// The charge alone (with the provider's prepare step when it has one),
    /// outside any transaction.
    pub async fn charge(&self, order: OrderRow) -> Result<(OrderRow, ChargeOutcome), Error> {
        let provider = self.payments.get(order.payment_method)?;
        let mut order = order;
        if order.charge_reference.is_none() {
            match provider.prepare(&charge_of(&order)).await {
                Ok(Some(reference)) => {
                    order = self.note_reference(&order, &reference).await?;
                }
                Ok(None) => {}
                Err(detail) => {
                    tracing::warn!(order_id = %order.id, detail, "preparing the charge failed; it will be retried");
                    return Ok((order, ChargeOutcome::Uncertain(detail)));
                }
            }
        }
        let outcome = provider.charge(&charge_of(&order)).await;
        Ok((order, outcome))
    }

    /// Stores the provider's reference of a charge not finished yet.
    async fn note_reference(&self, order: &OrderRow, reference: &str) -> Result<OrderRow, Error> {
        let mut conn = self.pool.get().await?;
        let changes = OrderChanges {
            charge_reference: Some(reference),
            ..Default::default()
        };
        Ok(
            store::orders::update(&mut conn, order.id, order.status, order.refund_state, changes)
                .await?
                .unwrap_or_else(|| order.clone()),
        )
    }

    /// Records how a charge of a PENDING_PAYMENT order ended.
    pub async fn record_charge(&self, order: OrderRow, outcome: ChargeOutcome) -> Result<OrderRow, Error> {
        match outcome {
            ChargeOutcome::Paid { reference } => {
                let mut conn = self.pool.get().await?;
                let paid = conn
                    .transaction::<_, Error, _>(async |conn| {
                        let changes = OrderChanges {
                            charge_reference: Some(&reference),
                            lease_until: Some(None),
                            ..Default::default()
                        };
                        match transition(conn, order.id, OrderStatus::PendingPayment, Transition::Pay, changes).await {
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
                    // Someone moved it first: it was paid already, or it was
                    // cancelled while this charge ran, and is then owed back.
                    None => self.charged_after_all(order.id, &reference).await,
                }
            }
            ChargeOutcome::Declined(decline) => {
                let reason = decline.reason();
                match self
                    .cancel_in_one(
                        &order,
                        OrderStatus::PendingPayment,
                        reason,
                        RefundState::NotNeeded,
                        None,
                    )
                    .await?
                {
                    Some(row) => Ok(row),
                    None => {
                        // Cancelled meanwhile with the outcome unknown: now
                        // it is known that nothing was taken.
                        let mut conn = self.pool.get().await?;
                        let changes = OrderChanges {
                            refund_state: Some(RefundState::NotNeeded),
                            lease_until: Some(None),
                            ..Default::default()
                        };
                        store::orders::update(
                            &mut conn,
                            order.id,
                            OrderStatus::Cancelled,
                            RefundState::Unknown,
                            changes,
                        )
                        .await?;
                        self.reload(order.id).await
                    }
                }
            }
            ChargeOutcome::Pending { reference } => match reference {
                Some(reference) if order.charge_reference.as_deref() != Some(reference.as_str()) => {
                    self.note_reference(&order, &reference).await
                }
                _ => Ok(order),
            },
            ChargeOutcome::Uncertain(detail) => {
                tracing::warn!(order_id = %order.id, detail, "the charge's outcome is unknown; it will be retried with the same key");
                Ok(order)
            }
        }
    }

    /// A charge went through for an order that someone else moved on: if it
    /// was cancelled meanwhile, the charge is owed back.
    async fn charged_after_all(&self, id: Uuid, reference: &str) -> Result<OrderRow, Error> {
        let mut conn = self.pool.get().await?;
        let changes = OrderChanges {
            charge_reference: Some(reference),
            refund_state: Some(RefundState::Due),
            ..Default::default()
        };
        let owed = store::orders::update(&mut conn, id, OrderStatus::Cancelled, RefundState::Unknown, changes).await?;
        drop(conn);
        match owed {
            Some(row) => self.settle(row).await,
            None => self.reload(id).await,
        }
    }

    /// Cancels `order` from `from` in one transaction: the status, the stock
    /// back, OrderCancelled, and what is still owed (`refund`). None when the
    /// order was no longer in `from`.
    async fn cancel_in_one(
        &self,
        order: &OrderRow,
        from: OrderStatus,
        reason: &'static str,
        refund: RefundState,
        cancel_request_id: Option<&str>,
    ) -> Result<Option<OrderRow>, Error> {
        // Whoever cancels with something still owed settles it next; the lease
        // keeps the resumer from doing the same at the same time.
        let lease = match refund {
            RefundState::Unknown | RefundState::Due => Some(self.lease_until(Utc::now())),
            RefundState::NotNeeded | RefundState::Done => None,
        };
        let mut conn = self.pool.get().await?;
        conn.transaction::<_, Error, _>(async |conn| {
            let changes = OrderChanges {
                refund_state: Some(refund),
                cancel_reason: Some(reason),
                cancel_request_id,
                lease_until: Some(lease),
                ..Default::default()
            };
            let row = match transition(conn, order.id, from, Transition::Cancel, changes).await {
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
            outbox::enqueue(
                conn,
                SOURCE,
                Payload::OrderCancelled(OrderCancelled {
                    order_id: row.id.to_string(),
                    user_id: row.user_id.to_string(),
                    reason: reasons::describe(reason).to_owned(),
                    refunded: refund == RefundState::Due,
                }),
            )
            .await?;
            Ok(Some(row))
        })
        .await
    }

    /// CancelOrder's work, after the caller's right to the order is checked:
    /// PENDING_PAYMENT or PAID becomes CANCELLED, then whatever is owed is
    /// settled. A retry with the same `request_id` returns the cancelled
    /// order.
    pub async fn cancel(&self, order: OrderRow, request_id: &RequestId) -> Result<OrderRow, Error> {
        let mut order = order;
        // A racing change (paid, shipped) makes the first attempt miss;
        // look again, a few times at most.
        for _ in 0..3 {
            let (from, refund) = match order.status {
                OrderStatus::PendingPayment => (OrderStatus::PendingPayment, RefundState::Unknown),
                OrderStatus::Paid => (OrderStatus::Paid, RefundState::Due),
                OrderStatus::Cancelled if order.cancel_request_id.as_deref() == Some(request_id.as_str()) => {
                    return self.settle(order).await;
                }
                status => return Err(not_cancellable(status)),
            };
            match self
                .cancel_in_one(
                    &order,
                    from,
                    reasons::CANCELLED_ON_REQUEST,
                    refund,
                    Some(request_id.as_str()),
                )
                .await?
            {
                Some(cancelled) => return self.settle(cancelled).await,
                None => order = self.reload(order.id).await?,
            }
        }
        Err(Error::aborted(
            "ORDER_CHANGING",
            "the order kept changing while it was being cancelled; retry",
        ))
    }

    /// Cancels an unpaid order past its payment deadline, then settles it.
    pub async fn expire(&self, order: OrderRow) -> Result<OrderRow, Error> {
        match self
            .cancel_in_one(
                &order,
                OrderStatus::PendingPayment,
                reasons::PAYMENT_DEADLINE_PASSED,
                RefundState::Unknown,
                None,
            )
            .await?
        {
            Some(cancelled) => self.settle(cancelled).await,
            None => self.reload(order.id).await,
        }
    }

    /// Settles what a cancelled order still owes: voids a charge whose
    /// outcome was unknown (learning whether it went through), and refunds a
    /// charge in full.
    /// An uncertain step leaves it for the resumer. Other orders are
    /// returned as they are.
    pub async fn settle(&self, order: OrderRow) -> Result<OrderRow, Error> {
        if order.status != OrderStatus::Cancelled {
            return Ok(order);
        }
        let mut order = order;
        if order.refund_state == RefundState::Unknown {
            let provider = self.payments.get(order.payment_method)?;
            let (state, changes) = match provider.void(&charge_of(&order)).await {
                ChargeOutcome::Paid { reference } => (RefundState::Due, Some(reference)),
                ChargeOutcome::Declined(_) => (RefundState::NotNeeded, None),
                ChargeOutcome::Pending { .. } | ChargeOutcome::Uncertain(_) => {
                    tracing::warn!(order_id = %order.id, "whether the cancelled order was charged is not known yet");
                    return Ok(order);
                }
            };
            let mut conn = self.pool.get().await?;
            let update = OrderChanges {
                charge_reference: changes.as_deref(),
                refund_state: Some(state),
                lease_until: (state == RefundState::NotNeeded).then_some(None),
                ..Default::default()
            };
            order = match store::orders::update(
                &mut conn,
                order.id,
                OrderStatus::Cancelled,
                RefundState::Unknown,
                update,
            )
            .await?
            {
                Some(row) => row,
                None => return self.reload(order.id).await,
            };
        }
        if order.refund_state == RefundState::Due {
            let provider = self.payments.get(order.payment_method)?;
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
            match provider.refund(&refund).await {
                RefundOutcome::Refunded { reference } => {
                    tracing::info!(order_id = %order.id, refund = reference, "refunded");
                    let mut conn = self.pool.get().await?;
                    let changes = OrderChanges {
                        refund_state: Some(RefundState::Done),
                        lease_until: Some(None),
                        ..Default::default()
                    };
                    return match store::orders::update(
                        &mut conn,
                        order.id,
                        OrderStatus::Cancelled,
                        RefundState::Due,
                        changes,
                    )
                    .await?
                    {
                        Some(row) => Ok(row),
                        None => self.reload(order.id).await,
                    };
                }
                RefundOutcome::Uncertain(detail) => {
                    tracing::warn!(order_id = %order.id, detail, "the refund did not complete; it will be retried with the same key");
                }
            }
        }
        Ok(order)
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
                    match transition(conn, order.id, from, step, OrderChanges::default()).await {
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
