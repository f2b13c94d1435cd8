//! Consuming events: each event becomes, in its own transaction, an inbox
//! entry and one delivery row per (channel, target) the user's preferences
//! pick. Nothing is sent here: the delivery workers do that after commit.

use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use keel::events::v1::event::Payload;
use keel_platform::{
    Error,
    events::{self, EventType},
    serve::rpc::parse_id,
};
use prost::Message as _;
use uuid::Uuid;

use super::{Notifications, preferences};
use crate::{
    domain::{Channel, Topic},
    email::templates::InboxText,
    messages,
    store::{
        deliveries::{self, NewDelivery},
        endpoints,
        inbox::{self, NewNotification},
        recipients,
    },
};

impl Notifications {
    /// Applies a delivered event once: true the first time, false for a
    /// repeated delivery, which changes nothing.
    pub async fn consume(&self, delivery: events::Delivery) -> Result<bool, Error> {
        let event_type = EventType::of(&delivery.payload);
        let user_id = subject(&delivery.payload)?;
        let topic = Topic::of(event_type);
        // Rendered before the transaction; the words do not depend on the data.
        let inbox_text = match topic {
            Some(_) => Some(self.templates.inbox(&messages::announcement(&delivery.payload)?)?),
            None => None,
        };
        let event = delivery.to_event().encode_to_vec();
        let mut conn = self.pool.get().await?;
        let first = conn
            .transaction::<_, Error, _>(async |conn| {
                if !events::first_delivery(conn, delivery.event_id).await? {
                    return Ok(false);
                }
                let queue = Queue {
                    event_id: delivery.event_id,
                    user_id,
                    event: &event,
                };
                match (&delivery.payload, topic) {
                    (Payload::PasswordResetRequested(request), _) => {
                        queue
                            .push(conn, Channel::Email, &request.email, event_type.as_str())
                            .await?;
                    }
                    (Payload::EmailVerificationRequested(request), _) => {
                        recipients::remember(conn, user_id, &request.email).await?;
                        queue
                            .push(conn, Channel::Email, &request.email, event_type.as_str())
                            .await?;
                    }
                    (payload, Some(topic)) => {
                        if let Payload::UserRegistered(registered) = payload {
                            recipients::remember(conn, user_id, &registered.email).await?;
                        }
                        let text = inbox_text.as_ref();
                        fan_out(conn, &queue, topic, text).await?;
                    }
                    (_, None) => {}
                }
                Ok(true)
            })
            .await?;
        Ok(first)
    }
}

/// The deliveries of one event.
struct Queue<'a> {
    event_id: Uuid,
    user_id: Uuid,
    event: &'a [u8],
}

impl Queue<'_> {
    async fn push(
        &self,
        conn: &mut AsyncPgConnection,
        channel: Channel,
        target: &str,
        event_type: &str,
    ) -> Result<(), Error> {
        deliveries::enqueue(
            conn,
            &NewDelivery {
                id: Uuid::now_v7(),
                event_id: self.event_id,
                channel,
                target,
                user_id: self.user_id,
                event_type,
                event: self.event,
            },
        )
        .await?;
        Ok(())
    }
}

/// Sends `topic` on the channels the user chose.
async fn fan_out(
    conn: &mut AsyncPgConnection,
    queue: &Queue<'_>,
    topic: Topic,
    inbox_text: Option<&InboxText>,
) -> Result<(), Error> {
    let chosen = preferences::of(conn, queue.user_id).await?;
    for channel in chosen.channels_for(topic) {
        match channel {
            Channel::InApp => {
                if let Some(text) = inbox_text {
                    inbox::append(
                        conn,
                        &NewNotification {
                            user_id: queue.user_id,
                            event_type: topic.as_str(),
                            event_id: queue.event_id,
                            title: &text.title,
                            body: &text.body,
                        },
                    )
                    .await?;
                }
            }
            Channel::Email => match recipients::email_of(conn, queue.user_id).await? {
                Some(address) => queue.push(conn, Channel::Email, &address, topic.as_str()).await?,
                None => tracing::info!(
                    user_id = %queue.user_id,
                    topic = topic.as_str(),
                    "no address is known for this user, so no mail is sent"
                ),
            },
            Channel::Webhook => {
                for endpoint in endpoints::enabled_of(conn, queue.user_id).await? {
                    if endpoint.wants(topic.as_str()) {
                        queue
                            .push(conn, Channel::Webhook, &endpoint.id.to_string(), topic.as_str())
                            .await?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The user an event is for.
fn subject(payload: &Payload) -> Result<Uuid, Error> {
    let (field, raw) = match payload {
        Payload::UserRegistered(e) => ("event.user_registered.user_id", &e.user_id),
        Payload::PasswordResetRequested(e) => ("event.password_reset_requested.user_id", &e.user_id),
        Payload::EmailVerificationRequested(e) => ("event.email_verification_requested.user_id", &e.user_id),
        Payload::OrderPlaced(e) => ("event.order_placed.user_id", &e.user_id),
        Payload::OrderPaid(e) => ("event.order_paid.user_id", &e.user_id),
        Payload::OrderShipped(e) => ("event.order_shipped.user_id", &e.user_id),
        Payload::OrderCancelled(e) => ("event.order_cancelled.user_id", &e.user_id),
        // An account's id is its owner's user id.
        Payload::BalanceChanged(e) => ("event.balance_changed.account_id", &e.account_id),
    };
    parse_id(field, raw)
}
