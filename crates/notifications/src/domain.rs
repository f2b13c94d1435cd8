//! The service's vocabulary, valid by construction: channels, delivery
//! states, what an attempt at a delivery came to, and the topics users
//! choose channels for. The enums stored in Postgres fail loudly on a label
//! the code does not know.

use std::time::Duration;

use diesel::{deserialize::FromSqlRow, expression::AsExpression};
use keel::notifications::v1 as pb;
use keel_platform::{error::FieldViolation, events::EventType};

use crate::schema::sql_types;

/// The service's name: how the registry knows it, and the consumer its
/// event spans name.
pub const NAME: &str = "notifications";

/// A way to reach a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, AsExpression, FromSqlRow)]
#[diesel(sql_type = sql_types::Channel)]
pub enum Channel {
    /// Mail to the user's address.
    Email,
    /// A signed POST to each of the user's webhook endpoints.
    Webhook,
    /// The in-app inbox.
    InApp,
}

impl Channel {
    /// Every channel, in the order defaults list them.
    pub const ALL: [Channel; 3] = [Channel::Email, Channel::Webhook, Channel::InApp];

    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Webhook => "webhook",
            Channel::InApp => "in_app",
        }
    }

    /// Reads the proto enum value at `field`; UNSPECIFIED and unknown numbers
    /// are refused.
    pub fn parse(field: &str, value: i32) -> Result<Self, FieldViolation> {
        match pb::Channel::try_from(value) {
            Ok(pb::Channel::Email) => Ok(Channel::Email),
            Ok(pb::Channel::Webhook) => Ok(Channel::Webhook),
            Ok(pb::Channel::InApp) => Ok(Channel::InApp),
            _ => Err(FieldViolation::new(
                field,
                "enum.defined_only",
                "must be CHANNEL_EMAIL, CHANNEL_WEBHOOK or CHANNEL_IN_APP",
            )),
        }
    }

    /// The proto enum.
    pub fn to_proto(self) -> pb::Channel {
        match self {
            Channel::Email => pb::Channel::Email,
            Channel::Webhook => pb::Channel::Webhook,
            Channel::InApp => pb::Channel::InApp,
        }
    }
}

keel_platform::pg_enum!(Channel, sql_types::Channel, "channel");

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, AsExpression, FromSqlRow)]
#[diesel(sql_type = sql_types::DeliveryState)]
pub enum DeliveryState {
    /// Waiting for its first or next attempt.
    Pending,
    /// The receiver took it.
    Delivered,
    /// Given up on; a dead letter records it.
    Dead,
    /// Its target went away (endpoint deleted or disabled).
    Dropped,
}

impl DeliveryState {
    /// Every state.
    pub const ALL: [DeliveryState; 4] = [
        DeliveryState::Pending,
        DeliveryState::Delivered,
        DeliveryState::Dead,
        DeliveryState::Dropped,
    ];

    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
            DeliveryState::Dropped => "dropped",
        }
    }
}

keel_platform::pg_enum!(DeliveryState, sql_types::DeliveryState, "delivery state");

/// The result of one attempt at sending a delivery, as every channel
/// (email, webhook) reports it to the delivery workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver took it (SMTP 2xx, HTTP 2xx).
    Delivered,
    /// Worth trying again later: a 4xx SMTP reply, a network error, a
    /// timeout, an HTTP error other than 410.
    Retry {
        /// The SMTP reply code or HTTP status; `None` when there was none.
        status: Option<i32>,
        /// A short description, never holding a secret.
        error: String,
        /// The receiver's `Retry-After`, when it gave one (429, 503).
        retry_after: Option<Duration>,
    },
    /// Refused for good (an SMTP 5xx, a URL the SSRF guard refuses): dead-
    /// lettered at once.
    Refused {
        /// The SMTP reply code or HTTP status; `None` when there was none.
        status: Option<i32>,
        /// A short description, never holding a secret.
        error: String,
    },
    /// The webhook receiver answered 410 Gone: the endpoint is disabled and
    /// nothing more is sent to it.
    Gone,
}

/// What a notification is about: the names users choose channels for, and
/// the `type` of webhook payloads. Security mail (verification, reset) is
/// not a topic: it always goes by email and can't be switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// `user.registered`: the welcome.
    UserRegistered,
    /// `order.placed`
    OrderPlaced,
    /// `order.paid`
    OrderPaid,
    /// `order.shipped`
    OrderShipped,
    /// `order.cancelled`
    OrderCancelled,
    /// `balance.changed`
    BalanceChanged,
    /// `webhook_endpoint.disabled`: in the inbox only.
    WebhookEndpointDisabled,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Topic; 7] = [
        Topic::UserRegistered,
        Topic::OrderPlaced,
        Topic::OrderPaid,
        Topic::OrderShipped,
        Topic::OrderCancelled,
        Topic::BalanceChanged,
        Topic::WebhookEndpointDisabled,
    ];

    /// The public name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Topic::UserRegistered => "user.registered",
            Topic::OrderPlaced => "order.placed",
            Topic::OrderPaid => "order.paid",
            Topic::OrderShipped => "order.shipped",
            Topic::OrderCancelled => "order.cancelled",
            Topic::BalanceChanged => "balance.changed",
            Topic::WebhookEndpointDisabled => "webhook_endpoint.disabled",
        }
    }

    /// The topic named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Topic::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Reads a topic name at `field`.
    pub fn parse(field: &str, name: &str) -> Result<Self, FieldViolation> {
        Topic::from_name(name).ok_or_else(|| {
            FieldViolation::new(
                field,
                "string.in",
                format!("must be one of {}", Topic::ALL.map(Topic::as_str).join(", ")),
            )
        })
    }

    /// The topic an event announces; `None` for security mail.
    pub fn of(event: EventType) -> Option<Self> {
        match event {
            EventType::UserRegistered => Some(Topic::UserRegistered),
            EventType::OrderPlaced => Some(Topic::OrderPlaced),
            EventType::OrderPaid => Some(Topic::OrderPaid),
            EventType::OrderShipped => Some(Topic::OrderShipped),
            EventType::OrderCancelled => Some(Topic::OrderCancelled),
            EventType::BalanceChanged => Some(Topic::BalanceChanged),
            EventType::PasswordResetRequested | EventType::EmailVerificationRequested => None,
        }
    }

    /// The channels that can carry it: the endpoint notice is for the inbox
    /// alone (its mail or webhook could be what failed).
    pub fn channels(self) -> &'static [Channel] {
        match self {
            Topic::WebhookEndpointDisabled => &[Channel::InApp],
            _ => &Channel::ALL,
        }
    }
}

/// A user's choice of channels: a default, and overrides per topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preferences {
    /// Channels for every topic without an override.
    pub default_channels: Vec<Channel>,
    /// Per-topic choices; an empty list turns the topic off.
    pub overrides: std::collections::BTreeMap<Topic, Vec<Channel>>,
}

impl Default for Preferences {
    /// Everything on every channel.
    fn default() -> Self {
        Self {
            default_channels: Channel::ALL.to_vec(),
            overrides: Default::default(),
        }
    }
}

impl Preferences {
    /// The channels `topic` goes out on.
    pub fn channels_for(&self, topic: Topic) -> Vec<Channel> {
        let chosen = self.overrides.get(&topic).unwrap_or(&self.default_channels);
        chosen
            .iter()
            .copied()
            .filter(|c| topic.channels().contains(c))
            .collect()
    }

    /// These preferences with `channel` turned off for `topic` (what an
    /// unsubscribe link does).
    #[must_use]
    pub fn without(mut self, topic: Topic, channel: Channel) -> Self {
        let kept = self
            .channels_for_choice(topic)
            .into_iter()
            .filter(|c| *c != channel)
            .collect();
        self.overrides.insert(topic, kept);
        self
    }

    fn channels_for_choice(&self, topic: Topic) -> Vec<Channel> {
        self.overrides.get(&topic).unwrap_or(&self.default_channels).clone()
    }

    /// The overrides as stored: `{"order.paid": ["in_app"]}`.
    pub fn overrides_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.overrides
                .iter()
                .map(|(topic, channels)| {
                    let names = channels.iter().map(|c| serde_json::Value::from(c.as_str())).collect();
                    (topic.as_str().to_owned(), serde_json::Value::Array(names))
                })
                .collect(),
        )
    }

    /// Reads stored overrides; a topic or channel the code does not know is
    /// an error, never skipped.
    pub fn overrides_from_json(
        value: &serde_json::Value,
    ) -> anyhow::Result<std::collections::BTreeMap<Topic, Vec<Channel>>> {
        let object = value
            .as_object()
            .ok_or_else(|| anyhow::anyhow!("stored preferences are not an object"))?;
        object
            .iter()
            .map(|(name, channels)| {
                let topic = Topic::from_name(name).ok_or_else(|| anyhow::anyhow!("unknown stored topic {name:?}"))?;
                let channels = channels
                    .as_array()
                    .ok_or_else(|| anyhow::anyhow!("stored channels of {name} are not a list"))?
                    .iter()
                    .map(|c| {
                        Channel::ALL
                            .into_iter()
                            .find(|known| Some(known.as_str()) == c.as_str())
                            .ok_or_else(|| anyhow::anyhow!("unknown stored channel {c}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok((topic, channels))
            })
            .collect()
    }
}
