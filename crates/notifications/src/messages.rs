//! What each event says to people: the [`Message`] the templates render,
//! and for mail the links in it (verification, one-click unsubscribe).

use chrono::{DateTime, Utc};
use keel::{
    common::v1::Money,
    events::v1::{Event, event::Payload},
};
use keel_platform::{Error, events::EventType, sealing::SealingKey};

use crate::email::{
    Mail,
    templates::Message,
    unsubscribe::{self, LinkKey},
};

/// Where mail links point.
#[derive(Debug, Clone)]
pub struct Links {
    /// The public base URL (the gateway).
    pub base_url: String,
    /// The application's password-reset page, `{token}` standing for it.
    pub password_reset: Option<String>,
    /// The key that signs unsubscribe links.
    pub unsubscribe_key: LinkKey,
}

impl Links {
    fn base(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }

    /// The email-verification link: opening it verifies the address (the
    /// gateway's GET binding of VerifyEmail).
    fn verify_email(&self, token: &str) -> String {
        format!("{}/v1/auth:verifyEmail?token={}", self.base(), encode(token))
    }

    fn password_reset(&self, token: &str) -> Option<String> {
        self.password_reset
            .as_ref()
            .map(|link| link.replace("{token}", &encode(token)))
    }

    /// The RFC 8058 one-click link (POSTed by mail clients).
    pub fn unsubscribe(&self, user_id: uuid::Uuid, topic: crate::domain::Topic) -> String {
        let token = unsubscribe::sign(self.unsubscribe_key.expose(), user_id, topic);
        format!("{}/v1/notifications:unsubscribe?token={}", self.base(), encode(&token))
    }
}

fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The announcement of an event that is not security mail (for the inbox,
/// webhooks' owners and notice mail); security events are refused.
pub fn announcement(payload: &Payload) -> Result<Message, Error> {
    let money = |m: &Option<Money>| m.clone().unwrap_or_default();
    Ok(match payload {
        Payload::UserRegistered(e) => Message::Welcome { email: e.email.clone() },
        Payload::OrderPlaced(e) => Message::OrderPlaced {
            order_id: e.order_id.clone(),
            total: money(&e.total),
        },
        Payload::OrderPaid(e) => Message::OrderPaid {
            order_id: e.order_id.clone(),
            amount: money(&e.amount),
        },
        Payload::OrderShipped(e) => Message::OrderShipped {
            order_id: e.order_id.clone(),
        },
        Payload::OrderCancelled(e) => Message::OrderCancelled {
            order_id: e.order_id.clone(),
            reason: e.reason.clone(),
            refunded: e.refunded,
        },
        Payload::BalanceChanged(e) => Message::BalanceChanged {
            delta: money(&e.delta),
            balance: money(&e.balance),
        },
        Payload::PasswordResetRequested(_) | Payload::EmailVerificationRequested(_) => {
            return Err(anyhow::anyhow!("security mail is not an announcement").into());
        }
    })
}

/// Why a mail can't be made: it goes to the dead letters as it is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unsendable(pub String);

/// The mail for `event` to `to`, identified by the delivery's id.
pub fn mail(
    templates: &crate::email::templates::Templates,
    links: &Links,
    event_secrets: Option<&SealingKey>,
    event: &Event,
    to: &str,
    delivery_id: uuid::Uuid,
) -> Result<Mail, Unsendable> {
    let payload = event
        .payload
        .as_ref()
        .ok_or_else(|| Unsendable("the stored event has no payload".into()))?;
    let (message, user_id) = match payload {
        Payload::EmailVerificationRequested(e) => {
            let token = open_token(
                event_secrets,
                EventType::EmailVerificationRequested,
                &e.user_id,
                &e.sealed_token,
                e.expire_time,
            )?;
            let message = Message::VerifyEmail {
                link: links.verify_email(&token.0),
                expire_time: token.1,
            };
            (message, &e.user_id)
        }
        Payload::PasswordResetRequested(e) => {
            let token = open_token(
                event_secrets,
                EventType::PasswordResetRequested,
                &e.user_id,
                &e.sealed_token,
                e.expire_time,
            )?;
            let message = Message::PasswordReset {
                link: links.password_reset(&token.0),
                token: token.0,
                expire_time: token.1,
            };
            (message, &e.user_id)
        }
        other => {
            let message = announcement(other).map_err(|err| Unsendable(err.to_string()))?;
            let user_id = match other {
                Payload::UserRegistered(e) => &e.user_id,
                Payload::OrderPlaced(e) => &e.user_id,
                Payload::OrderPaid(e) => &e.user_id,
                Payload::OrderShipped(e) => &e.user_id,
                Payload::OrderCancelled(e) => &e.user_id,
                Payload::BalanceChanged(e) => &e.account_id,
                Payload::PasswordResetRequested(e) => &e.user_id,
                Payload::EmailVerificationRequested(e) => &e.user_id,
            };
            (message, user_id)
        }
    };
    let rendered = templates
        .mail(&message)
        .map_err(|err| Unsendable(format!("rendering the mail failed: {err:#}")))?;
    let unsubscribe_url = match (message.topic(), uuid::Uuid::parse_str(user_id)) {
        (Some(topic), Ok(user)) => Some(links.unsubscribe(user, topic)),
        _ => None,
    };
    Ok(Mail {
        message_id: format!("{delivery_id}"),
        to: to.to_owned(),
        subject: rendered.subject,
        text: rendered.text,
        html: rendered.html,
        unsubscribe_url,
    })
}

/// Opens an event's one-time token, if it still works.
fn open_token(
    key: Option<&SealingKey>,
    event_type: EventType,
    user_id: &str,
    sealed: &Option<keel::events::v1::SealedSecret>,
    expire_time: Option<prost_types::Timestamp>,
) -> Result<(String, DateTime<Utc>), Unsendable> {
    let expire_time = expire_time
        .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .ok_or_else(|| Unsendable("the event has no expiry time".into()))?;
    if expire_time <= Utc::now() {
        return Err(Unsendable("the token expired before the mail could be sent".into()));
    }
    let sealed = sealed
        .as_ref()
        .ok_or_else(|| Unsendable("the event carries no token (auth has no KEEL_EVENT_SECRETS_KEY)".into()))?;
    let key =
        key.ok_or_else(|| Unsendable("KEEL_EVENT_SECRETS_KEY is not set, so the token can't be opened".into()))?;
    let token = key
        .open_event_secret(event_type, user_id, sealed)
        .map_err(|err| Unsendable(format!("the token can't be opened: {err:#}")))?;
    Ok((token, expire_time))
}
