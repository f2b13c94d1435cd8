//! The webhook body: the Standard Webhooks envelope
//! `{"type": ..., "timestamp": ..., "data": ...}` around the event's payload
//! in the proto3 JSON mapping, as the gateway writes Keel's messages.

use std::sync::LazyLock;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat};
use keel::events::v1::Event;
use keel_platform::events::EventType;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde::{Serialize, Serializer};

use crate::domain::Topic;

/// The envelope's message, whose `payload` oneof holds what happened.
const EVENT_MESSAGE: &str = "keel.events.v1.Event";

/// The name of the envelope's oneof.
const PAYLOAD_ONEOF: &str = "payload";

/// Keel's descriptors, decoded once; an error here means the binary was
/// built with a broken descriptor set.
static POOL: LazyLock<Result<DescriptorPool, String>> =
    LazyLock::new(|| DescriptorPool::decode(keel::FILE_DESCRIPTOR_SET).map_err(|err| err.to_string()));

/// The JSON body webhooked for `event`, or `None` for events that are never
/// webhooked (password reset and email verification requests: they carry
/// one-time tokens). `timestamp` is the event's `create_time`; the event's
/// id travels in the `webhook-id` header, not here. The same event always
/// gives the same bytes, so a retry resends exactly what was signed before.
pub fn body(event: &Event) -> anyhow::Result<Option<Vec<u8>>> {
    let payload = event
        .payload
        .as_ref()
        .with_context(|| format!("event {} has no payload", event.id))?;
    let Some(topic) = Topic::of(EventType::of(payload)) else {
        return Ok(None);
    };
    let create_time = event
        .create_time
        .as_ref()
        .with_context(|| format!("event {} has no create_time", event.id))?;
    let timestamp = u32::try_from(create_time.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(create_time.seconds, nanos))
        .with_context(|| format!("event {} has an invalid create_time", event.id))?
        .to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let data = payload_message(event).with_context(|| format!("encoding event {} as JSON", event.id))?;
    let body = Body {
        kind: topic.as_str(),
        timestamp,
        data: Data(&data),
    };
    serde_json::to_vec(&body)
        .with_context(|| format!("encoding event {} as JSON", event.id))
        .map(Some)
}

/// The envelope's payload as a dynamic message, so it serialises with the
/// proto3 JSON mapping.
fn payload_message(event: &Event) -> anyhow::Result<DynamicMessage> {
    let pool = POOL
        .as_ref()
        .map_err(|err| anyhow::anyhow!("Keel's descriptor set: {err}"))?;
    let descriptor = pool
        .get_message_by_name(EVENT_MESSAGE)
        .with_context(|| format!("the descriptor set lacks {EVENT_MESSAGE}"))?;
    let envelope = DynamicMessage::decode(descriptor.clone(), event.encode_to_vec().as_slice())
        .context("reading the event through its descriptor")?;
    let oneof = descriptor
        .oneofs()
        .find(|oneof| oneof.name() == PAYLOAD_ONEOF)
        .with_context(|| format!("{EVENT_MESSAGE} has no {PAYLOAD_ONEOF} oneof"))?;
    let field = oneof
        .fields()
        .find(|field| envelope.has_field(field))
        .context("the event's payload is not one the descriptor set knows")?;
    envelope
        .get_field(&field)
        .as_message()
        .cloned()
        .with_context(|| format!("the payload {} is not a message", field.name()))
}

/// The Standard Webhooks envelope; fields serialise in this order.
#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: String,
    data: Data<'a>,
}

/// A payload in the proto3 JSON mapping as the gateway writes it:
/// camelCase names, fields with default values written out, 64-bit
/// integers as strings; fields in number order, so the bytes are stable.
struct Data<'a>(&'a DynamicMessage);

impl Serialize for Data<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let options = SerializeOptions::new().skip_default_fields(false);
        self.0.serialize_with_options(serializer, &options)
    }
}

#[cfg(test)]
mod tests {
    use keel::{
        common::v1::Money,
        events::v1::{EmailVerificationRequested, OrderCancelled, OrderPaid, PasswordResetRequested, event::Payload},
    };

    use super::*;

    fn event(payload: Payload) -> Event {
        Event {
            id: "0192f0c4-7a3e-7b6f-9d2e-1a2b3c4d5e6f".into(),
            source: "orders".into(),
            create_time: Some(prost_types::Timestamp {
                seconds: 1_667_507_170,
                nanos: 344_522_000,
            }),
            trace_context: [("traceparent".to_owned(), "00-abc-def-01".to_owned())].into(),
            payload: Some(payload),
        }
    }

    #[test]
    fn order_paid_in_the_standard_envelope() -> anyhow::Result<()> {
        let paid = event(Payload::OrderPaid(OrderPaid {
            order_id: "o1".into(),
            user_id: "u1".into(),
            amount: Some(Money {
                amount_minor: 1050,
                currency_code: "EUR".into(),
            }),
        }));
        let body = body(&paid)?.context("order.paid is webhooked")?;
        assert_eq!(
            String::from_utf8(body.clone())?,
            r#"{"type":"order.paid","timestamp":"2022-11-03T20:26:10.344522Z","data":{"orderId":"o1","userId":"u1","amount":{"amountMinor":"1050","currencyCode":"EUR"}}}"#
        );
        assert_eq!(super::body(&paid)?, Some(body), "the same bytes every time");
        Ok(())
    }

    #[test]
    fn default_values_are_written_out_and_the_id_is_left_out() -> anyhow::Result<()> {
        let mut cancelled = event(Payload::OrderCancelled(OrderCancelled {
            order_id: "o1".into(),
            user_id: "u1".into(),
            reason: String::new(),
            refunded: false,
        }));
        cancelled.create_time = Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        });
        let body = body(&cancelled)?.context("order.cancelled is webhooked")?;
        let json: serde_json::Value = serde_json::from_slice(&body)?;
        assert_eq!(json["type"], "order.cancelled");
        assert_eq!(json["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(json["data"]["reason"], "");
        assert_eq!(json["data"]["refunded"], false);
        let text = String::from_utf8(body)?;
        assert!(!text.contains(&cancelled.id), "the id is the webhook-id header: {text}");
        assert!(!text.contains("traceparent"), "{text}");
        Ok(())
    }

    #[test]
    fn security_mail_is_never_webhooked() -> anyhow::Result<()> {
        let reset = event(Payload::PasswordResetRequested(PasswordResetRequested {
            user_id: "u1".into(),
            email: "a@example.com".into(),
            ..Default::default()
        }));
        assert_eq!(body(&reset)?, None);
        let verify = event(Payload::EmailVerificationRequested(EmailVerificationRequested {
            user_id: "u1".into(),
            email: "a@example.com".into(),
            ..Default::default()
        }));
        assert_eq!(body(&verify)?, None);
        Ok(())
    }

    #[test]
    fn every_other_event_type_has_a_body() -> anyhow::Result<()> {
        use keel::events::v1::{BalanceChanged, OrderPlaced, OrderShipped, UserRegistered};
        let payloads = [
            Payload::UserRegistered(UserRegistered::default()),
            Payload::OrderPlaced(OrderPlaced::default()),
            Payload::OrderShipped(OrderShipped::default()),
            Payload::BalanceChanged(BalanceChanged::default()),
        ];
        for payload in payloads {
            let name = EventType::of(&payload).as_str();
            let body = body(&event(payload))?.with_context(|| format!("{name} is webhooked"))?;
            let json: serde_json::Value = serde_json::from_slice(&body)?;
            assert_eq!(json["type"], name);
            assert!(json["data"].is_object(), "{json}");
        }
        Ok(())
    }

    #[test]
    fn broken_envelopes_are_errors() {
        let mut no_payload = event(Payload::OrderShipped(Default::default()));
        no_payload.payload = None;
        assert!(body(&no_payload).is_err());
        let mut no_time = event(Payload::OrderShipped(Default::default()));
        no_time.create_time = None;
        assert!(body(&no_time).is_err());
        let mut bad_time = event(Payload::OrderShipped(Default::default()));
        bad_time.create_time = Some(prost_types::Timestamp { seconds: 0, nanos: -1 });
        assert!(body(&bad_time).is_err());
    }
}
