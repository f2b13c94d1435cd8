//! The card gateway's webhook, verified as Stripe signs it:
//! `Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`
//! (several `v1` values while a secret rotates), within a tolerance of the
//! signing time, compared in constant time.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit as _, Mac as _};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use sha2::Sha256;

/// How far a signature's time may be from now.
pub const TOLERANCE_SECS: i64 = 300;

/// Why a webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No `Stripe-Signature`, or one without `t` or `v1`.
    #[error("the Stripe-Signature header is missing or malformed")]
    Malformed,
    /// Signed too long ago (or in the future): a replay.
    #[error("the signature's timestamp is outside the {TOLERANCE_SECS} s tolerance")]
    Stale,
    /// No `v1` matches any configured secret.
    #[error("no signature matches")]
    Mismatch,
    /// Signed, but not an event Keel can read.
    #[error("the event is not readable: {0}")]
    Unreadable(String),
}

/// A verified event, as much of it as Keel reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    /// `evt_...`: deliveries of one event share it.
    pub id: String,
    /// e.g. `payment_intent.succeeded`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The object the event is about.
    pub data: EventData,
}

/// An event's object.
#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    /// For `payment_intent.*`: the intent.
    pub object: EventObject,
}

/// The fields Keel reads of an event's object.
#[derive(Debug, Clone, Deserialize)]
pub struct EventObject {
    /// The object's id (`pi_...`).
    pub id: String,
    /// Its metadata (`order_id` for Keel's intents).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Checks `payload` against `header` with any of `secrets` at `now` (unix
/// seconds) and reads the event.
pub fn verify(payload: &[u8], header: Option<&str>, secrets: &[SecretString], now: i64) -> Result<Event, Refused> {
    let header = header.ok_or(Refused::Malformed)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => signatures.push(decode_hex(value).ok_or(Refused::Malformed)?),
            // v0 (test-mode legacy) and unknown schemes are ignored.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(Refused::Malformed)?;
    if signatures.is_empty() {
        return Err(Refused::Malformed);
    }
    if (now - timestamp).abs() > TOLERANCE_SECS {
        return Err(Refused::Stale);
    }
    let matches = secrets.iter().any(|secret| {
        signatures.iter().any(|signature| {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()) else {
                return false;
            };
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(payload);
            // Constant time.
            mac.verify_slice(signature).is_ok()
        })
    });
    if !matches {
        return Err(Refused::Mismatch);
    }
    serde_json::from_slice(payload).map_err(|err| Refused::Unreadable(err.to_string()))
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, timestamp: i64, payload: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(payload);
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    const EVENT: &[u8] =
        br#"{"id":"evt_1","type":"payment_intent.succeeded","data":{"object":{"id":"pi_1","metadata":{"order_id":"o"}}}}"#;

    #[test]
    fn a_good_signature_verifies_and_anything_else_is_refused() {
        let secrets = vec![SecretString::from("whsec_new"), SecretString::from("whsec_old")];
        let now = 1_700_000_000;
        let good = format!("t={now},v1={}", sign("whsec_new", now, EVENT));
        let event = verify(EVENT, Some(&good), &secrets, now + 10).expect("verified");
        assert_eq!(
            (event.id.as_str(), event.kind.as_str()),
            ("evt_1", "payment_intent.succeeded")
        );
        assert_eq!(event.data.object.metadata["order_id"], "o");

        // During a rotation the sender signs with both; either secret works.
        let rotating = format!(
            "t={now},v1={},v1={}",
            sign("whsec_other", now, EVENT),
            sign("whsec_old", now, EVENT)
        );
        assert!(verify(EVENT, Some(&rotating), &secrets, now).is_ok());

        let tampered =
            br#"{"id":"evt_1","type":"payment_intent.succeeded","data":{"object":{"id":"pi_2","metadata":{}}}}"#;
        assert_eq!(
            verify(tampered, Some(&good), &secrets, now).unwrap_err(),
            Refused::Mismatch
        );
        assert_eq!(
            verify(EVENT, Some(&good), &secrets, now + TOLERANCE_SECS + 1).unwrap_err(),
            Refused::Stale
        );
        let wrong = format!("t={now},v1={}", sign("whsec_wrong", now, EVENT));
        assert_eq!(
            verify(EVENT, Some(&wrong), &secrets, now).unwrap_err(),
            Refused::Mismatch
        );
        for header in [None, Some(""), Some("t=1"), Some("v1=00"), Some("t=x,v1=zz")] {
            assert!(verify(EVENT, header, &secrets, now).is_err(), "{header:?}");
        }
    }
}
