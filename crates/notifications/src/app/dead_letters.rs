//! Dead letters: the deliveries that never went through, for an operator
//! to list and send again.

use diesel_async::AsyncConnection as _;
use keel_platform::Error;
use uuid::Uuid;

use super::{Notifications, Page};
use crate::{
    domain::Channel,
    store::{
        dead_letters::{self, DeadLetterRow},
        deliveries, endpoints,
    },
};

impl Notifications {
    /// A page of at most `limit` dead letters not yet redelivered, newest
    /// first, before the `before` id: all of them, or those of webhook
    /// endpoint `endpoint`.
    pub async fn dead_letters(
        &self,
        endpoint: Option<Uuid>,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Page<DeadLetterRow>, Error> {
        let endpoint = endpoint.map(|id| id.to_string());
        let mut conn = self.pool.get().await?;
        let rows = dead_letters::page(&mut conn, endpoint.as_deref(), before, limit + 1).await?;
        Ok(Page::of(rows, limit, |row| row.id))
    }

    /// Queues dead letter `id`'s delivery again, once: a webhook only while
    /// its endpoint exists and is enabled.
    pub async fn redeliver(&self, id: Uuid) -> Result<DeadLetterRow, Error> {
        let mut conn = self.pool.get().await?;
        let row = conn
            .transaction::<_, Error, _>(async |conn| {
                let row = dead_letters::lock(conn, id)
                    .await?
                    .ok_or_else(|| Error::not_found("dead letter"))?;
                if row.redeliver_time.is_some() {
                    return Err(Error::failed_precondition(
                        "ALREADY_REDELIVERED",
                        "this dead letter was redelivered already; a new one appears if that fails too",
                    ));
                }
                if row.channel == Channel::Webhook {
                    let endpoint = match Uuid::parse_str(&row.target) {
                        Ok(endpoint) => endpoints::find(conn, endpoint).await?,
                        Err(_) => None,
                    };
                    match endpoint {
                        None => {
                            return Err(Error::failed_precondition(
                                "WEBHOOK_ENDPOINT_DELETED",
                                "the endpoint this delivery was for has been deleted",
                            ));
                        }
                        Some(endpoint) if endpoint.disable_time.is_some() => {
                            return Err(Error::failed_precondition(
                                "WEBHOOK_ENDPOINT_DISABLED",
                                "the endpoint this delivery was for is disabled; create a new one",
                            ));
                        }
                        Some(_) => {}
                    }
                }
                // Queued again and no longer listed, together.
                if !deliveries::requeue(conn, row.delivery_id, row.channel).await? {
                    return Err(anyhow::anyhow!(
                        "the delivery {} of dead letter {} is not dead",
                        row.delivery_id,
                        row.id
                    )
                    .into());
                }
                Ok(dead_letters::mark_redelivered(conn, row.id).await?)
            })
            .await?;
        tracing::info!(dead_letter_id = %row.id, delivery_id = %row.delivery_id, "dead letter redelivered");
        Ok(row)
    }
}
