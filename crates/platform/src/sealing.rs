//! Secrets sealed under a key that lives outside the database, so a copy of
//! the database alone holds nothing usable: the one-time tokens in auth's
//! events (sealed for the service that mails them) and auth's private signing
//! keys (under a key-encryption key).
//!
//! AES-256-GCM with a random 96-bit nonce per secret (far fewer than 2^32
//! secrets are sealed under one key), authenticated together with a context
//! that binds the ciphertext to where it belongs: a sealed secret copied into
//! another row or event does not open.

use std::{fmt, str::FromStr, sync::Arc};

use anyhow::Context as _;
use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use keel::events::v1::SealedSecret;
use sha2::{Digest as _, Sha256};

use crate::events::EventType;

/// The length of a key, in bytes (written in base64 in settings).
pub const KEY_LEN: usize = 32;

/// A 256-bit sealing key. `Debug` shows only its id.
#[derive(Clone)]
pub struct SealingKey {
    key: Arc<RandomizedNonceKey>,
    id: Arc<str>,
}

impl SealingKey {
    /// A key from its 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            bytes.len() == KEY_LEN,
            "a sealing key is {KEY_LEN} bytes, not {}",
            bytes.len()
        );
        let key =
            RandomizedNonceKey::new(&AES_256_GCM, bytes).map_err(|_| anyhow::anyhow!("the sealing key was refused"))?;
        // A fingerprint, not the key: it names which key sealed a secret, so
        // opening with another key says so instead of "corrupt".
        let digest = Sha256::new()
            .chain_update(b"keel sealing key id\0")
            .chain_update(bytes)
            .finalize();
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect::<String>();
        Ok(Self {
            key: Arc::new(key),
            id: id.into(),
        })
    }

    /// A fresh random key, and its base64 form for a setting.
    pub fn generate() -> anyhow::Result<(Self, String)> {
        let mut bytes = [0u8; KEY_LEN];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("no randomness for a sealing key"))?;
        Ok((Self::from_bytes(&bytes)?, STANDARD.encode(bytes)))
    }

    /// The key's fingerprint (16 hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `plaintext` bound to `context`: the nonce, then the ciphertext
    /// and its tag.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut in_out = plaintext.to_vec();
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(context), &mut in_out)
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + in_out.len());
        sealed.extend_from_slice(nonce.as_ref());
        sealed.extend_from_slice(&in_out);
        Ok(sealed)
    }

    /// Opens what [`SealingKey::seal`] sealed with the same `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(sealed.len() > NONCE_LEN, "the sealed secret is truncated");
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow::anyhow!("bad nonce"))?;
        let mut in_out = ciphertext.to_vec();
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(context), &mut in_out)
            .map_err(|_| anyhow::anyhow!("the sealed secret does not open with key {}", self.id))?;
        Ok(plaintext.to_vec())
    }

    /// Seals an event's secret (a one-time token) for the event's consumer,
    /// bound to the event type and the user it is for.
    pub fn seal_event_secret(
        &self,
        event_type: EventType,
        user_id: &str,
        secret: &str,
    ) -> anyhow::Result<SealedSecret> {
        Ok(SealedSecret {
            key_id: self.id.to_string(),
            sealed: self.seal(secret.as_bytes(), &event_context(event_type, user_id))?,
        })
    }

    /// Opens an event's secret sealed by [`SealingKey::seal_event_secret`].
    pub fn open_event_secret(
        &self,
        event_type: EventType,
        user_id: &str,
        secret: &SealedSecret,
    ) -> anyhow::Result<String> {
        anyhow::ensure!(
            secret.key_id == *self.id,
            "the secret was sealed with key {}, this service has key {} (KEEL_EVENT_SECRETS_KEY differs)",
            secret.key_id,
            self.id
        );
        let plaintext = self.open(&secret.sealed, &event_context(event_type, user_id))?;
        String::from_utf8(plaintext).context("the sealed secret is not text")
    }
}

fn event_context(event_type: EventType, user_id: &str) -> Vec<u8> {
    format!("keel event secret\0{}\0{user_id}", event_type.as_str()).into_bytes()
}

impl FromStr for SealingKey {
    type Err = anyhow::Error;

    /// Reads a key written in base64 (standard alphabet); the error never
    /// repeats the value.
    fn from_str(text: &str) -> anyhow::Result<Self> {
        let bytes = STANDARD.decode(text.trim()).map_err(|_| {
            anyhow::anyhow!("a sealing key is {KEY_LEN} bytes in base64 (e.g. `openssl rand -base64 32`)")
        })?;
        Self::from_bytes(&bytes)
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_context() -> anyhow::Result<()> {
        let (key, text) = SealingKey::generate()?;
        let same: SealingKey = text.parse()?;
        assert_eq!(key.id(), same.id());
        let sealed = key.seal(b"secret", b"row 1")?;
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(same.open(&sealed, b"row 1")?, b"secret");
        assert!(key.open(&sealed, b"row 2").is_err(), "another context");
        let (other, _) = SealingKey::generate()?;
        assert!(other.open(&sealed, b"row 1").is_err(), "another key");
        assert_ne!(key.seal(b"secret", b"row 1")?, sealed, "a fresh nonce each time");
        Ok(())
    }

    #[test]
    fn event_secrets_are_bound_to_their_event_and_user() -> anyhow::Result<()> {
        let (key, _) = SealingKey::generate()?;
        let sealed = key.seal_event_secret(EventType::PasswordResetRequested, "u1", "token")?;
        assert_eq!(
            key.open_event_secret(EventType::PasswordResetRequested, "u1", &sealed)?,
            "token"
        );
        assert!(
            key.open_event_secret(EventType::PasswordResetRequested, "u2", &sealed)
                .is_err()
        );
        assert!(
            key.open_event_secret(EventType::EmailVerificationRequested, "u1", &sealed)
                .is_err()
        );
        let (other, _) = SealingKey::generate()?;
        let refused = other
            .open_event_secret(EventType::PasswordResetRequested, "u1", &sealed)
            .expect_err("another key");
        assert!(refused.to_string().contains("KEEL_EVENT_SECRETS_KEY"), "{refused}");
        Ok(())
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        let refused = "not base64!".parse::<SealingKey>().expect_err("not base64");
        assert!(!refused.to_string().contains("not base64!"));
        assert!("c2hvcnQ=".parse::<SealingKey>().is_err(), "too short");
    }
}
