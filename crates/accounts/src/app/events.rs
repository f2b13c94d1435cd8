//! The events of other services that accounts acts on: UserRegistered
//! creates the user's account.

use diesel_async::AsyncConnection as _;
use keel::events::v1::event::Payload;
use keel_platform::{Error, events, serve::rpc::parse_id};

use super::Accounts;
use crate::store;

impl Accounts {
    /// Applies a delivered event once: a repeated delivery changes nothing.
    /// Returns whether this was its first delivery.
    pub async fn consume(&self, delivery: &events::Delivery) -> Result<bool, Error> {
        let mut conn = self.pool.get().await?;
        let currency = self.currency.as_str();
        conn.transaction::<_, Error, _>(async |conn| {
            if !events::first_delivery(conn, delivery.event_id).await? {
                return Ok(false);
            }
            if let Payload::UserRegistered(registered) = &delivery.payload {
                let user_id = parse_id("event.user_registered.user_id", &registered.user_id)?;
                store::accounts::ensure(conn, user_id, &registered.email, currency).await?;
            }
            Ok(true)
        })
        .await
    }
}
