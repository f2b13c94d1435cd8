//! The EventSink: events from other services that accounts acts on.

use diesel_async::AsyncConnection as _;
use keel::events::v1::{DeliverResponse, event::Payload};
use keel_platform::{Error, events, serve::rpc::parse_id};

use super::Accounts;
use crate::store;

/// Applies a delivered event once: a repeated delivery changes nothing and
/// says it was a duplicate.
pub(super) async fn deliver(accounts: &Accounts, delivery: events::Delivery) -> Result<DeliverResponse, Error> {
    let mut conn = accounts.pool.get().await?;
    let currency = accounts.currency.as_str();
    let first = conn
        .transaction::<_, Error, _>(async |conn| {
            if !events::first_delivery(conn, delivery.event_id).await? {
                return Ok(false);
            }
            if let Payload::UserRegistered(registered) = &delivery.payload {
                let user_id = parse_id("event.user_registered.user_id", &registered.user_id)?;
                store::ensure_account(conn, user_id, &registered.email, currency).await?;
            }
            Ok(true)
        })
        .await?;
    Ok(DeliverResponse { duplicate: !first })
}
