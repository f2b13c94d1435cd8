//! The card gateway's webhook: it says how a payment intent ended. The event
//! is verified over the body exactly as it was sent, then only names the
//! order to look at: the saga reads the intent itself and acts on its real
//! status, so a forged or stale copy in the event changes nothing, and a
//! replayed event finds the work done.

use chrono::Utc;
use keel_platform::Error;
use uuid::Uuid;

use super::Orders;
use crate::{
    payment::webhook::{self, Event},
    status::{OrderStatus, PaymentMethod},
    store::{self, card_gateway_events::NewEvent},
};

impl Orders {
    /// Handles one webhook call: `body` as the gateway sent it, `signature`
    /// its signature header. Refused (UNAUTHENTICATED, BAD_SIGNATURE) unless
    /// signed with one of the webhook secrets; an event about anything but a
    /// payment intent, or one handled already, is accepted and ignored.
    pub async fn handle_card_webhook(&self, signature: Option<&str>, body: &[u8]) -> Result<(), Error> {
        let event = webhook::verify(body, signature, &self.webhook_secrets, Utc::now().timestamp())
            .map_err(|refused| Error::unauthenticated("BAD_SIGNATURE", refused.to_string()))?;
        if !event.kind.starts_with("payment_intent.") {
            return Ok(());
        }
        let seen = {
            let mut conn = self.pool.get().await?;
            store::card_gateway_events::seen(&mut conn, &event.id).await?
        };
        if seen {
            tracing::debug!(event_id = event.id, "card gateway event already handled");
            return Ok(());
        }
        self.settle_intent(&event).await?;
        let mut conn = self.pool.get().await?;
        store::card_gateway_events::record(
            &mut conn,
            NewEvent {
                id: &event.id,
                event_type: &event.kind,
                object_id: &event.data.object.id,
            },
        )
        .await?;
        Ok(())
    }

    /// Takes the order the event's intent belongs to a step further, as the
    /// resumer would, under a claim of its own.
    async fn settle_intent(&self, event: &Event) -> Result<(), Error> {
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
            let mut conn = self.pool.get().await?;
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
        let Some(order) = self.take_over(order.id).await? else {
            tracing::debug!(event_id = event.id, %order_id, "the event's order is finished; nothing to do");
            return Ok(());
        };
        match order.status {
            OrderStatus::PendingPayment => self.pay(order).await?,
            _ => self.settle(order).await?,
        };
        Ok(())
    }
}
