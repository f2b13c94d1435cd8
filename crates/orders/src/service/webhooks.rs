//! HandleCardGatewayWebhook: the card gateway says how a payment intent
//! ended. The event is verified over the body exactly as it was sent, then
//! only names the order to look at: the saga reads the intent itself and
//! acts on its real status, so a forged or stale copy in the event changes
//! nothing, and a replayed event finds the work done.

use chrono::Utc;
use diesel::{ExpressionMethods as _, QueryDsl as _};
use diesel_async::RunQueryDsl as _;
use keel::orders::v1 as pb;
use keel_platform::Error;
use uuid::Uuid;

use super::Orders;
use crate::{
    payment::webhook::{self, Event},
    schema::card_gateway_events,
    status::{OrderStatus, PaymentMethod},
    store,
};

/// The metadata key the card gateway's events carry their signature in.
const SIGNATURE: &str = "stripe-signature";

pub(super) async fn handle(
    orders: &Orders,
    signature: Option<&str>,
    request: pb::HandleCardGatewayWebhookRequest,
) -> Result<pb::HandleCardGatewayWebhookResponse, Error> {
    let body = request.body.unwrap_or_default();
    let event = webhook::verify(&body.data, signature, &orders.webhook_secrets, Utc::now().timestamp())
        .map_err(|refused| Error::unauthenticated("BAD_SIGNATURE", refused.to_string()))?;
    if !event.kind.starts_with("payment_intent.") {
        return Ok(pb::HandleCardGatewayWebhookResponse {});
    }
    let mut conn = orders.pool.get().await?;
    let seen: i64 = card_gateway_events::table
        .filter(card_gateway_events::id.eq(&event.id))
        .count()
        .get_result(&mut conn)
        .await?;
    if seen > 0 {
        tracing::debug!(event_id = event.id, "card gateway event already handled");
        return Ok(pb::HandleCardGatewayWebhookResponse {});
    }
    drop(conn);
    settle_intent(orders, &event).await?;
    let mut conn = orders.pool.get().await?;
    diesel::insert_into(card_gateway_events::table)
        .values((
            card_gateway_events::id.eq(&event.id),
            card_gateway_events::event_type.eq(&event.kind),
            card_gateway_events::object_id.eq(&event.data.object.id),
        ))
        .on_conflict_do_nothing()
        .execute(&mut conn)
        .await?;
    Ok(pb::HandleCardGatewayWebhookResponse {})
}

/// Takes the order the event's intent belongs to a step further, as the
/// resumer would, under a claim of its own.
async fn settle_intent(orders: &Orders, event: &Event) -> Result<(), Error> {
    let intent = &event.data.object;
    let Some(order_id) = intent.metadata.get("order_id").and_then(|id| Uuid::parse_str(id).ok()) else {
        tracing::info!(
            event_id = event.id,
            intent = intent.id,
            "a card gateway event about no Keel order; ignored"
        );
        return Ok(());
    };
    let order = {
        let mut conn = orders.pool.get().await?;
        store::orders::find(&mut conn, order_id).await?
    };
    let Some(order) = order.filter(|o| {
        o.payment_method == PaymentMethod::External && o.charge_reference.as_deref() == Some(intent.id.as_str())
    }) else {
        tracing::warn!(event_id = event.id, intent = intent.id, %order_id, "a card gateway event names an order that is not this intent's; ignored");
        return Ok(());
    };
    // Acting needs a claim, as any worker's step does: the news is fresher
    // than whatever a holder (or a retry waiting out its hold) knows, so the
    // webhook takes the order over.
    let Some(order) = orders.take_over(order.id).await? else {
        tracing::debug!(event_id = event.id, %order_id, "the event's order is finished; nothing to do");
        return Ok(());
    };
    match order.status {
        OrderStatus::PendingPayment => orders.pay(order).await?,
        _ => orders.settle(order).await?,
    };
    Ok(())
}

/// The signature header of a webhook call.
pub(super) fn signature<T>(request: &tonic::Request<T>) -> Option<String> {
    request
        .metadata()
        .get(SIGNATURE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
