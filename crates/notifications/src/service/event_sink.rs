//! The EventSink's Deliver: the event, checked by platform, goes to
//! [`Notifications::consume`]; a repeat is answered as a duplicate.

use keel::events::v1::DeliverResponse;
use keel_platform::{Error, events};

use super::Notifications;

/// Applies a delivered event once: a repeated delivery changes nothing and
/// says it was a duplicate.
pub(super) async fn deliver(service: &Notifications, delivery: events::Delivery) -> Result<DeliverResponse, Error> {
    let first = service.consume(delivery).await?;
    Ok(DeliverResponse { duplicate: !first })
}
