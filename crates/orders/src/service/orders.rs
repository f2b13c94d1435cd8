//! CreateOrder, GetOrder, ListOrders, CancelOrder, ShipOrder and
//! DeliverOrder: reading requests into the order operations of `app` and
//! shaping the orders they answer.

use keel::orders::v1 as pb;
use keel_platform::{
    Error,
    auth::principal::UserPrincipal,
    db::paging,
    error::FieldViolation,
    proto::{money, timestamp},
    serve::rpc::{etag, invalid, parse_id, uuid_field},
};

use crate::{
    app::{Line, ListOrders, OrderView, Orders, PlaceOrder},
    domain::{self, MAX_LINES, RequestId},
    status::{OrderStatus, PaymentMethod, RefundState},
};

pub(super) async fn create_order(
    orders: &Orders,
    caller: &UserPrincipal,
    request: pb::CreateOrderRequest,
) -> Result<pb::CreateOrderResponse, Error> {
    let order = read_order(caller, &request)?;
    let placed = orders.create_order(&order).await?;
    Ok(pb::CreateOrderResponse {
        order: Some(order_pb(&placed)),
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
        bad.push(field(
            "payment_method",
            "enum.not_in",
            "must be ACCOUNT_BALANCE or EXTERNAL",
        ));
    }
    let payment_method_id = request.external_payment_method_id.trim();
    let payment_method_id = match method {
        Some(PaymentMethod::External) if domain::is_gateway_id(payment_method_id) => Some(payment_method_id.to_owned()),
        Some(PaymentMethod::External) => {
            bad.push(field(
                "external_payment_method_id",
                "PAYMENT_METHOD_ID_INVALID",
                "must name the card gateway's payment method (1 to 255 letters, digits and underscores)",
            ));
            None
        }
        // Only a card payment has a payment method at the gateway.
        _ => None,
    };
    if request.items.is_empty() || request.items.len() > MAX_LINES {
        bad.push(field(
            "items",
            "LINES_OUT_OF_RANGE",
            &format!("must have 1 to {MAX_LINES} lines"),
        ));
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

fn field(name: &str, reason: &'static str, description: &str) -> FieldViolation {
    FieldViolation::new(name, reason, description)
}

pub(super) async fn get_order(
    orders: &Orders,
    caller: &UserPrincipal,
    request: pb::GetOrderRequest,
) -> Result<pb::GetOrderResponse, Error> {
    let id = parse_id("order_id", &request.order_id)?;
    let order = orders.get_order(caller, id).await?;
    Ok(pb::GetOrderResponse {
        order: Some(order_pb(&order)),
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
        Err(_) => {
            return Err(Error::invalid_field(
                "status",
                "enum.defined_only",
                "is not an order status",
            ));
        }
    };
    let refund_state = match pb::RefundState::try_from(request.refund_state) {
        Ok(state) => RefundState::from_pb(state),
        Err(_) => {
            return Err(Error::invalid_field(
                "refund_state",
                "enum.defined_only",
                "is not a refund state",
            ));
        }
    };
    // Unset: the caller's own orders, or everyone's for an admin (the app
    // decides, and refuses another user's to a non-admin).
    let user_id = match request.user_id.as_str() {
        "" => None,
        raw => Some(parse_id("user_id", raw)?),
    };
    let filter = ListOrders {
        user_id,
        status,
        refund_state,
    };
    let page = orders.list_orders(caller, &filter, before, limit).await?;
    Ok(pb::ListOrdersResponse {
        orders: page.items.iter().map(order_pb).collect(),
        next_page_token: page.next_page_token,
    })
}

pub(super) async fn cancel_order(
    orders: &Orders,
    caller: &UserPrincipal,
    request: pb::CancelOrderRequest,
) -> Result<pb::CancelOrderResponse, Error> {
    let request_id = RequestId::parse("request_id", &request.request_id).map_err(invalid)?;
    let id = parse_id("order_id", &request.order_id)?;
    let cancelled = orders.cancel_order(caller, id, &request_id).await?;
    Ok(pb::CancelOrderResponse {
        order: Some(order_pb(&cancelled)),
    })
}

pub(super) async fn ship_order(orders: &Orders, request: pb::ShipOrderRequest) -> Result<pb::ShipOrderResponse, Error> {
    let id = parse_id("order_id", &request.order_id)?;
    let shipped = orders.ship_order(id).await?;
    Ok(pb::ShipOrderResponse {
        order: Some(order_pb(&shipped)),
    })
}

pub(super) async fn deliver_order(
    orders: &Orders,
    request: pb::DeliverOrderRequest,
) -> Result<pb::DeliverOrderResponse, Error> {
    let id = parse_id("order_id", &request.order_id)?;
    let delivered = orders.deliver_order(id).await?;
    Ok(pb::DeliverOrderResponse {
        order: Some(order_pb(&delivered)),
    })
}

fn order_pb(view: &OrderView) -> pb::Order {
    let OrderView { order: row, items } = view;
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
