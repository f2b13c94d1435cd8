//! Placing an order (step 1 of CreateOrder): one transaction reserves every
//! line's units (or none), snapshots names and prices, inserts the order
//! PENDING_PAYMENT and claimed by the caller, and writes OrderPlaced.

use chrono::Utc;
use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use keel::events::v1::{OrderPlaced, event::Payload};
use keel_platform::{Error, events::outbox, proto::money};
use uuid::Uuid;

use super::{Orders, SOURCE, Step, charge_of, lookup::OrderView};
use crate::{
    config::CrashPoint,
    domain::{MAX_TOTAL_MINOR, RequestId, reasons},
    status::{OrderStatus, PaymentMethod},
    store::{
        self,
        orders::{ItemRow, NewItem, NewOrder, OrderRow},
        products,
    },
};

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
    /// A new order, claimed by the caller, which should now pay it.
    New(OrderRow),
    /// The order an earlier call with the same key placed.
    Existing(OrderRow),
}

impl Orders {
    /// CreateOrder: [`Orders::create`], answered with the order's lines. An
    /// order whose payment failed answers with that failure instead, to the
    /// first call and to every retry.
    pub async fn create_order(&self, order: &PlaceOrder) -> Result<OrderView, Error> {
        let placed = self.create(order).await?;
        if let Some(reason) = placed.cancel_reason.as_deref().and_then(reasons::payment_failure) {
            return Err(Error::failed_precondition(
                reason,
                format!("the payment failed: {}", reasons::describe(reason)),
            )
            .with_metadata("order_id", placed.id.to_string()));
        }
        self.view(placed).await
    }

    /// CreateOrder's work: places the order (or finds the one this key
    /// placed) and pays it, or helps an unpaid one along unless someone else
    /// is at it. Returns the order as it is afterwards.
    pub async fn create(&self, order: &PlaceOrder) -> Result<OrderRow, Error> {
        // Refused before anything is reserved.
        self.payments.get(order.method)?;
        let crash = self.saga.test_crash_after;
        Ok(match self.place(order).await? {
            // Test hook: stop as a crashed process would.
            Placed::New(order) if crash == Some(CrashPoint::Reservation) => order,
            Placed::New(order) if crash == Some(CrashPoint::Charge) => {
                if let Step::Go(order) = self.begin_charge(order.clone()).await? {
                    self.payments
                        .get(order.payment_method)?
                        .charge(&charge_of(&order))
                        .await;
                }
                order
            }
            Placed::New(order) => self.pay(order).await?,
            Placed::Existing(order) if order.status == OrderStatus::PendingPayment => match self.claim(order.id).await?
            {
                Some(claimed) => self.pay(claimed).await?,
                None => order,
            },
            Placed::Existing(order) => order,
        })
    }

    /// Step 1: reserves, snapshots and inserts the order, once per (buyer,
    /// key).
    pub async fn place(&self, order: &PlaceOrder) -> Result<Placed, Error> {
        let now = Utc::now();
        let deadline = now + self.saga.payment_deadline();
        let lease_until = now + self.saga.lease();
        // Kept with the order, so its later steps join this call's trace.
        let trace = keel_platform::serve::telemetry::current_trace_context();
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
