//! Signed one-click unsubscribe tokens (RFC 8058): the link in a mail's
//! `List-Unsubscribe` header carries one, and whoever holds it may switch
//! that mail's topic off for that user, with no sign-in.
//!
//! A token is base64url (no padding) of the user id's 16 bytes, the topic's
//! name, then an HMAC-SHA256 of both. It never expires: mail stays in
//! inboxes for years and its unsubscribe link must keep working.

use std::sync::Arc;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit as _, Mac as _};
use secrecy::{ExposeSecret as _, SecretBox};
use sha2::Sha256;
use uuid::Uuid;

use crate::domain::Topic;

type HmacSha256 = Hmac<Sha256>;

/// Mixed into the MAC so a tag made for anything else with the same key
/// can't pass for an unsubscribe token.
const CONTEXT: &[u8] = b"keel unsubscribe v1\0";

const ID_LEN: usize = 16;
const TAG_LEN: usize = 32;

/// The key that signs unsubscribe links: 32 bytes, made once and stored in
/// the database, so every replica signs alike. `Debug` never shows it;
/// clones share it.
#[derive(Debug, Clone)]
pub struct LinkKey(Arc<SecretBox<[u8; 32]>>);

impl LinkKey {
    /// The key of these bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(Arc::new(SecretBox::new(Box::new(bytes))))
    }

    /// The bytes, to [`sign`] and [`verify`] with.
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

/// The token that unsubscribes `user_id` from `topic`'s mail.
pub fn sign(key: &[u8; 32], user_id: Uuid, topic: Topic) -> String {
    let mut bytes = Vec::with_capacity(ID_LEN + topic.as_str().len() + TAG_LEN);
    bytes.extend_from_slice(user_id.as_bytes());
    bytes.extend_from_slice(topic.as_str().as_bytes());
    let tag = keyed(key, &bytes).finalize().into_bytes();
    bytes.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The user and topic a token names, if `key` signed it; `None` for
/// anything malformed, forged, or naming a topic Keel doesn't know.
pub fn verify(key: &[u8; 32], token: &str) -> Option<(Uuid, Topic)> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    if bytes.len() <= ID_LEN + TAG_LEN {
        return None;
    }
    let (signed, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    // Constant-time comparison: a timing leak would let the tag be guessed
    // byte by byte.
    keyed(key, signed).verify_slice(tag).ok()?;
    let (id, topic) = signed.split_at(ID_LEN);
    let user_id = Uuid::from_slice(id).ok()?;
    let topic = Topic::from_name(std::str::from_utf8(topic).ok()?)?;
    Some((user_id, topic))
}

fn keyed(key: &[u8; 32], message: &[u8]) -> HmacSha256 {
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC takes keys of any length, so this arm is never taken.
        Err(_) => unreachable!("HMAC accepts a key of any length"),
    };
    mac.update(CONTEXT);
    mac.update(message);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn round_trip() {
        let user = Uuid::now_v7();
        for topic in Topic::ALL {
            let token = sign(&KEY, user, topic);
            assert_eq!(verify(&KEY, &token), Some((user, topic)));
            assert!(!token.contains(['+', '/', '=']), "{token}");
        }
    }

    #[test]
    fn any_changed_character_is_refused() {
        let token = sign(&KEY, Uuid::now_v7(), Topic::OrderPaid);
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for i in 0..token.len() {
            for &c in alphabet {
                let mut forged = token.clone().into_bytes();
                if forged[i] == c {
                    continue;
                }
                forged[i] = c;
                let forged = String::from_utf8(forged).unwrap();
                assert_eq!(verify(&KEY, &forged), None, "position {i}, {}", c as char);
            }
        }
    }

    #[test]
    fn truncated_or_extended_is_refused() {
        let token = sign(&KEY, Uuid::now_v7(), Topic::OrderShipped);
        assert_eq!(verify(&KEY, &token[..token.len() - 1]), None);
        assert_eq!(verify(&KEY, &format!("{token}A")), None);
        assert_eq!(verify(&KEY, ""), None);
        assert_eq!(verify(&KEY, "not base64!"), None);
    }

    #[test]
    fn another_key_is_refused() {
        let token = sign(&KEY, Uuid::now_v7(), Topic::BalanceChanged);
        assert_eq!(verify(&[8; 32], &token), None);
    }

    #[test]
    fn unknown_topic_is_refused() {
        // Signed correctly, but naming a topic Keel doesn't have.
        let mut bytes = Uuid::now_v7().as_bytes().to_vec();
        bytes.extend_from_slice(b"order.teleported");
        let tag = keyed(&KEY, &bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag);
        assert_eq!(verify(&KEY, &URL_SAFE_NO_PAD.encode(bytes)), None);
    }
}
