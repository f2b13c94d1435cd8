//! CreateOrder, GetOrder, ListOrders, CancelOrder, ShipOrder and
//! DeliverOrder: reading requests and shaping answers around the saga.

use std::collections::BTreeMap;

use keel::orders::v1 as pb;
use keel_platform::{
    Error,
    auth::principal::UserPrincipal,
    db::paging,
    error::FieldViolation,
    proto::{money, timestamp},
    serve::rpc::{parse_id, uuid_field},
};
use uuid::Uuid;

use keel_platform::serve::rpc::etag;

use super::Orders;
use crate::{
    app::{Line, PlaceOrder},
    domain::{self, MAX_LINES, RequestId, reasons},
    status::{OrderStatus, PaymentMethod, RefundState},
    store::{self, ItemRow, OrderRow},
};

pub(super) async fn create_order(
    orders: &Orders,
    caller: &UserPrincipal,
    request: pb::CreateOrderRequest,
) -> Result<pb::CreateOrderResponse, Error> {
    let order = read_order(caller, &request)?;
    let placed = orders.create(&order).await?;
    if let Some(reason) = placed.cancel_reason.as_deref().and_then(reasons::payment_failure) {
        return Err(
            Error::failed_precondition(reason, format!("the payment failed: {}", reasons::describe(reason)))
                .with_metadata("order_id", placed.id.to_string()),
        );
    }
    Ok(pb::CreateOrderResponse {
        order: Some(orders.order_pb(placed).await?),
    })
}

/// Reads a CreateOrder into a [`PlaceOrder`], naming every bad field.
fn read_order(caller: &UserPrincipal, request: &pb::CreateOrderRequest) -> Result<PlaceOrder, Error> {
    let mut bad = Vec::new();
    let request_id = RequestId::parse("request_id", &request.request_id)
        .map_err(|v| bad.push(v))
        .ok();
    let method = pb::PaymentMethod::try_from(request.payment_method)
        .ok()
        .and_then(PaymentMethod::from_pb);
    if method.is_none() {
        bad.push(field("payment_method", "must be ACCOUNT_BALANCE or EXTERNAL"));
    }
    let payment_method_id = request.external_payment_method_id.trim();
    let payment_method_id = match method {
        Some(PaymentMethod::External) if domain::is_gateway_id(payment_method_id) => Some(payment_method_id.to_owned()),
        Some(PaymentMethod::External) => {
            bad.push(field(
                "external_payment_method_id",
                "must name the card gateway's payment method (1 to 255 letters, digits and underscores)",
            ));
            None
        }
        // Only a card payment has a payment method at the gateway.
        _ => None,
    };
    if request.items.is_empty() || request.items.len() > MAX_LINES {
        bad.push(field("items", &format!("must have 1 to {MAX_LINES} lines")));
    }
    let mut lines = Vec::with_capacity(request.items.len());
    for (i, item) in request.items.iter().enumerate() {
        let product_id = uuid_field(&format!("items[{i}].product_id"), &item.product_id).map_err(|v| bad.push(v));
        let quantity = domain::quantity(&format!("items[{i}].quantity"), item.quantity).map_err(|v| bad.push(v));
        if let (Ok(product_id), Ok(quantity)) = (product_id, quantity) {
            lines.push(Line { product_id, quantity });
        }
    }
    match (request_id, method) {
        (Some(request_id), Some(method)) if bad.is_empty() => Ok(PlaceOrder {
            user_id: caller.user_id,
            request_id,
            lines,
            method,
            payment_method_id,
        }),
        _ => Err(Error::invalid_fields(bad)),
    }
}

fn field(name: &str, description: &str) -> FieldViolation {
    FieldViolation {
        field: name.into(),
        description: description.into(),
    }
}

pub(super) async fn get_order(
    orders: &Orders,
    caller: &UserPrincipal,
    request: pb::GetOrderRequest,
) -> Result<pb::GetOrderResponse, Error> {
    let order = visible_order(orders, caller, &request.order_id).await?;
    Ok(pb::GetOrderResponse {
        order: Some(orders.order_pb(order).await?),
    })
}

pub(super) async fn list_orders(
    orders: &Orders,
    caller: &UserPrincipal,
    request: pb::ListOrdersRequest,
) -> Result<pb::ListOrdersResponse, Error> {
    let limit = paging::page_size(request.page_size)?;
    let before = paging::decode_token(&request.page_token)?;
    let status = match pb::OrderStatus::try_from(request.status) {
        Ok(status) => OrderStatus::from_pb(status),
        Err(_) => return Err(Error::invalid_field("status", "is not an order status")),
    };
    let refund_state = match pb::RefundState::try_from(request.refund_state) {
        Ok(state) => RefundState::from_pb(state),
        Err(_) => return Err(Error::invalid_field("refund_state", "is not a refund state")),
    };
    let buyer = match request.user_id.as_str() {
        "" if caller.is_admin() => None,
        "" => Some(caller.user_id),
        raw => {
            let id = parse_id("user_id", raw)?;
            if id != caller.user_id && !caller.is_admin() {
                return Err(Error::permission_denied(
                    "NOT_ORDER_OWNER",
                    "a user may only list their own orders",
                ));
            }
            Some(id)
        }
    };
    let rows = {
        let mut conn = orders.pool.get().await?;
        store::orders::list(&mut conn, buyer, status, refund_state, before, limit + 1).await?
    };
    let (page, next_page_token) = paging::page(rows, limit, |row| paging::encode_token(row.id));
    Ok(pb::ListOrdersResponse {
        orders: orders.orders_pb(page).await?,
        next_page_token,
    })
}

pub(super) async fn cancel_order(
    orders: &Orders,
    caller: &UserPrincipal,
    request: pb::CancelOrderRequest,
) -> Result<pb::CancelOrderResponse, Error> {
    let request_id = RequestId::parse("request_id", &request.request_id).map_err(keel_platform::serve::rpc::invalid)?;
    let order = visible_order(orders, caller, &request.order_id).await?;
    let cancelled = orders.cancel(order, &request_id).await?;
    Ok(pb::CancelOrderResponse {
        order: Some(orders.order_pb(cancelled).await?),
    })
}

pub(super) async fn ship_order(orders: &Orders, request: pb::ShipOrderRequest) -> Result<pb::ShipOrderResponse, Error> {
    let order = find_order(orders, &request.order_id).await?;
    let shipped = orders.ship(order).await?;
    Ok(pb::ShipOrderResponse {
        order: Some(orders.order_pb(shipped).await?),
    })
}

pub(super) async fn deliver_order(
    orders: &Orders,
    request: pb::DeliverOrderRequest,
) -> Result<pb::DeliverOrderResponse, Error> {
    let order = find_order(orders, &request.order_id).await?;
    let delivered = orders.deliver(order).await?;
    Ok(pb::DeliverOrderResponse {
        order: Some(orders.order_pb(delivered).await?),
    })
}

async fn find_order(orders: &Orders, raw_id: &str) -> Result<OrderRow, Error> {
    let id = parse_id("order_id", raw_id)?;
    let mut conn = orders.pool.get().await?;
    store::orders::find(&mut conn, id)
        .await?
        .ok_or_else(|| Error::not_found("order"))
}

/// The order, if the caller may see it: their own, or any for an admin.
/// Another user's order answers as a missing one, so ids reveal nothing.
async fn visible_order(orders: &Orders, caller: &UserPrincipal, raw_id: &str) -> Result<OrderRow, Error> {
    let order = find_order(orders, raw_id).await?;
    if order.user_id == caller.user_id || caller.is_admin() {
        Ok(order)
    } else {
        Err(Error::not_found("order"))
    }
}

impl Orders {
    async fn order_pb(&self, order: OrderRow) -> Result<pb::Order, Error> {
        let mut all = self.orders_pb(vec![order]).await?;
        all.pop()
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("an order went missing while being read")))
    }

    async fn orders_pb(&self, rows: Vec<OrderRow>) -> Result<Vec<pb::Order>, Error> {
        let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
        let items = {
            let mut conn = self.pool.get().await?;
            store::orders::items(&mut conn, &ids).await?
        };
        let mut by_order: BTreeMap<Uuid, Vec<ItemRow>> = BTreeMap::new();
        for item in items {
            by_order.entry(item.order_id).or_default().push(item);
        }
        Ok(rows
            .into_iter()
            .map(|row| {
                let items = by_order.remove(&row.id).unwrap_or_default();
                order_pb(&row, &items)
            })
            .collect())
    }
}

fn order_pb(row: &OrderRow, items: &[ItemRow]) -> pb::Order {
    pb::Order {
        id: row.id.to_string(),
        user_id: row.user_id.to_string(),
        items: items
            .iter()
            .map(|item| pb::OrderItem {
                product_id: item.product_id.to_string(),
                product_name: item.product_name.clone(),
                quantity: item.quantity,
                unit_price: Some(money(item.unit_price_minor, &item.currency)),
                line_total: Some(money(
                    item.unit_price_minor.saturating_mul(i64::from(item.quantity)),
                    &item.currency,
                )),
            })
            .collect(),
        total: Some(money(row.total_minor, &row.currency)),
        status: row.status.to_pb() as i32,
        payment_method: row.payment_method.to_pb() as i32,
        etag: etag(row.version),
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
        refund_state: row.refund_state.to_pb() as i32,
    }
}
