//! The EventSink: events from other services that accounts acts on.

use keel::events::v1::DeliverResponse;
use keel_platform::{Error, events};

use crate::app::Accounts;

/// Applies a delivered event once: a repeated delivery changes nothing and
/// says it was a duplicate.
pub(super) async fn deliver(accounts: &Accounts, delivery: events::Delivery) -> Result<DeliverResponse, Error> {
    let first = accounts.consume(&delivery).await?;
    Ok(DeliverResponse { duplicate: !first })
}
