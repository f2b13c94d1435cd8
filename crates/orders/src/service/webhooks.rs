//! HandleCardGatewayWebhook: the card gateway says how a payment intent
//! ended. This adapter only hands the body, exactly as it was sent, and its
//! signature header to the app's webhook handler (`app::webhooks`), which
//! verifies it and settles the intent it names.

use keel::orders::v1 as pb;
use keel_platform::Error;

use crate::app::Orders;

/// The metadata key the card gateway's events carry their signature in.
const SIGNATURE: &str = "stripe-signature";

pub(super) async fn handle(
    orders: &Orders,
    signature: Option<&str>,
    request: pb::HandleCardGatewayWebhookRequest,
) -> Result<pb::HandleCardGatewayWebhookResponse, Error> {
    let body = request.body.unwrap_or_default();
    orders.handle_card_webhook(signature, &body.data).await?;
    Ok(pb::HandleCardGatewayWebhookResponse {})
}

/// The signature header of a webhook call.
pub(super) fn signature<T>(request: &tonic::Request<T>) -> Option<String> {
    request
        .metadata()
        .get(SIGNATURE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
