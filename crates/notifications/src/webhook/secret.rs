//! An endpoint's signing secret: random bytes shown once to its owner as
//! `whsec_<base64>`, and sealed at rest under the notifications secrets key.

use anyhow::Context as _;
use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig, general_purpose::STANDARD},
};
use keel_platform::sealing::SealingKey;
use rand::{TryRngCore as _, rngs::OsRng};
use secrecy::{ExposeSecret as _, SecretSlice};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;
use zeroize::Zeroizing;

/// The prefix Standard Webhooks gives symmetric secrets.
pub const WHSEC_PREFIX: &str = "whsec_";

/// Standard base64 that reads secrets with or without their padding.
const PADDING_OPTIONAL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How many random bytes a generated secret has.
pub const GENERATED_LEN: usize = 32;

/// The lengths Standard Webhooks allows for a symmetric secret (192 to 512
/// bits); a parsed secret outside them is refused.
pub const LEN_RANGE: std::ops::RangeInclusive<usize> = 24..=64;

/// The setting whose key seals secrets, named in errors so operators know
/// what to fix.
const KEY_SETTING: &str = "KEEL_NOTIFICATIONS_SECRETS_KEY";

/// An HMAC-SHA256 signing secret of 24 to 64 bytes. `Debug` never shows the
/// bytes, they are wiped from memory when it is dropped, and `==` compares
/// in constant time.
#[derive(Debug, Clone)]
pub struct SigningSecret(SecretSlice<u8>);

impl SigningSecret {
    /// A fresh secret of [`GENERATED_LEN`] bytes from the operating system's
    /// random source; an error only when that source fails.
    pub fn generate() -> anyhow::Result<Self> {
        let mut bytes = Zeroizing::new(vec![0u8; GENERATED_LEN]);
        OsRng
            .try_fill_bytes(&mut bytes)
            .context("the operating system gave no randomness for a signing secret")?;
        Ok(Self::holding(&bytes))
    }

    /// The secret as its owner sees it: `whsec_` and the bytes in standard
    /// base64 (with padding).
    pub fn to_whsec(&self) -> String {
        format!("{WHSEC_PREFIX}{}", STANDARD.encode(self.as_bytes()))
    }

    /// Reads a `whsec_...` secret. Padding may be left off, as the reference
    /// libraries accept it; the error never repeats the text.
    pub fn parse_whsec(text: &str) -> anyhow::Result<Self> {
        let encoded = text
            .trim()
            .strip_prefix(WHSEC_PREFIX)
            .context("a signing secret starts with \"whsec_\"")?;
        let bytes = Zeroizing::new(
            PADDING_OPTIONAL
                .decode(encoded)
                .map_err(|_| anyhow::anyhow!("a signing secret is \"whsec_\" and standard base64"))?,
        );
        Self::from_bytes(bytes)
    }

    /// The raw key bytes (the HMAC key).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.expose_secret()
    }

    /// A secret of a copy of `bytes` (allocated to their exact length, so
    /// the copy never moves); the caller's `Zeroizing` wipes the original.
    fn holding(bytes: &[u8]) -> Self {
        Self(SecretSlice::new(Box::from(bytes)))
    }

    fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            LEN_RANGE.contains(&bytes.len()),
            "a signing secret is {} to {} bytes, not {}",
            LEN_RANGE.start(),
            LEN_RANGE.end(),
            bytes.len()
        );
        Ok(Self::holding(&bytes))
    }

    /// The form stored in the endpoint's row: sealed under `key` (bound to
    /// `endpoint_id`, so the sealed bytes do not open in another row), with
    /// the key's id to record which key sealed it; without a key, the raw
    /// bytes and `None`.
    pub fn seal(&self, key: Option<&SealingKey>, endpoint_id: Uuid) -> anyhow::Result<(Vec<u8>, Option<String>)> {
        match key {
            Some(key) => {
                let sealed = key
                    .seal(self.as_bytes(), &context(endpoint_id))
                    .with_context(|| format!("sealing the signing secret of webhook endpoint {endpoint_id}"))?;
                Ok((sealed, Some(key.id().to_owned())))
            }
            None => Ok((self.as_bytes().to_vec(), None)),
        }
    }

    /// Reads what [`SigningSecret::seal`] stored: `sealed_with` is the id of
    /// the key that sealed it (`None` for a secret stored as it is).
    pub fn open(
        stored: &[u8],
        sealed_with: Option<&str>,
        key: Option<&SealingKey>,
        endpoint_id: Uuid,
    ) -> anyhow::Result<Self> {
        let bytes = match (sealed_with, key) {
            (None, _) => Zeroizing::new(stored.to_vec()),
            (Some(sealed_with), None) => anyhow::bail!(
                "the signing secret of webhook endpoint {endpoint_id} is sealed with key {sealed_with}, \
                 and {KEY_SETTING} is not set"
            ),
            (Some(sealed_with), Some(key)) if sealed_with != key.id() => anyhow::bail!(
                "the signing secret of webhook endpoint {endpoint_id} is sealed with key {sealed_with}, \
                 this service has key {} ({KEY_SETTING} differs)",
                key.id()
            ),
            (Some(_), Some(key)) => Zeroizing::new(key.open(stored, &context(endpoint_id)).with_context(|| {
                format!("opening the signing secret of webhook endpoint {endpoint_id} (is {KEY_SETTING} right?)")
            })?),
        };
        Self::from_bytes(bytes).with_context(|| format!("the stored signing secret of webhook endpoint {endpoint_id}"))
    }
}

/// What a sealed secret is bound to: its purpose and its endpoint's row.
fn context(endpoint_id: Uuid) -> Vec<u8> {
    format!("keel webhook signing secret\0{endpoint_id}").into_bytes()
}

impl PartialEq for SigningSecret {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes().ct_eq(other.as_bytes()).into()
    }
}

impl Eq for SigningSecret {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_32_random_bytes_and_round_trip_as_whsec() -> anyhow::Result<()> {
        let secret = SigningSecret::generate()?;
        assert_eq!(secret.as_bytes().len(), GENERATED_LEN);
        assert_ne!(SigningSecret::generate()?, secret, "fresh bytes each time");
        let text = secret.to_whsec();
        assert!(text.starts_with("whsec_"), "{text}");
        assert_eq!(text.len(), "whsec_".len() + 44, "32 bytes are 44 base64 characters");
        assert_eq!(SigningSecret::parse_whsec(&text)?, secret);
        Ok(())
    }

    #[test]
    fn parses_the_reference_libraries_secrets() -> anyhow::Result<()> {
        // 24-byte secrets from the Standard Webhooks libraries' tests, with
        // and without padding.
        let secret = SigningSecret::parse_whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
        assert_eq!(secret.as_bytes().len(), 24);
        let bytes = SigningSecret::generate()?;
        let unpadded = bytes.to_whsec().trim_end_matches('=').to_owned();
        assert_eq!(SigningSecret::parse_whsec(&unpadded)?, bytes);
        Ok(())
    }

    #[test]
    fn bad_secrets_are_refused_without_echoing_them() {
        for text in [
            "",
            "whsec_",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not*base64",
            "whsec_c2hvcnQ=",
        ] {
            let refused = SigningSecret::parse_whsec(text).expect_err(text);
            assert!(text.len() < 8 || !refused.to_string().contains(text), "{refused}");
        }
    }

    #[test]
    fn debug_never_shows_the_bytes() -> anyhow::Result<()> {
        let secret = SigningSecret::generate()?;
        let shown = format!("{secret:?}");
        let whsec = secret.to_whsec();
        assert!(!shown.contains(&whsec["whsec_".len()..]), "{shown}");
        assert!(!shown.contains(&format!("{:?}", secret.as_bytes())), "{shown}");
        Ok(())
    }

    #[test]
    fn sealed_secrets_open_only_in_their_row_with_their_key() -> anyhow::Result<()> {
        let (key, _) = SealingKey::generate()?;
        let secret = SigningSecret::generate()?;
        let row = Uuid::now_v7();
        let (stored, sealed_with) = secret.seal(Some(&key), row)?;
        assert_eq!(sealed_with.as_deref(), Some(key.id()));
        assert!(
            !stored.windows(8).any(|w| w == &secret.as_bytes()[..8]),
            "sealed, not copied"
        );
        assert_eq!(
            SigningSecret::open(&stored, sealed_with.as_deref(), Some(&key), row)?,
            secret
        );

        let other_row = SigningSecret::open(&stored, sealed_with.as_deref(), Some(&key), Uuid::now_v7());
        assert!(other_row.is_err(), "copied to another row");

        let without_key = SigningSecret::open(&stored, sealed_with.as_deref(), None, row).expect_err("no key");
        assert!(format!("{without_key:#}").contains(KEY_SETTING), "{without_key:#}");

        let (other, _) = SealingKey::generate()?;
        let other_key = SigningSecret::open(&stored, sealed_with.as_deref(), Some(&other), row).expect_err("other key");
        assert!(format!("{other_key:#}").contains(KEY_SETTING), "{other_key:#}");
        Ok(())
    }

    #[test]
    fn without_a_key_secrets_are_stored_as_they_are() -> anyhow::Result<()> {
        let (key, _) = SealingKey::generate()?;
        let secret = SigningSecret::generate()?;
        let row = Uuid::now_v7();
        let (stored, sealed_with) = secret.seal(None, row)?;
        assert_eq!(sealed_with, None);
        assert_eq!(stored, secret.as_bytes());
        // A key configured later still reads the rows stored before it.
        assert_eq!(SigningSecret::open(&stored, None, Some(&key), row)?, secret);
        assert_eq!(SigningSecret::open(&stored, None, None, row)?, secret);
        assert!(SigningSecret::open(b"short", None, None, row).is_err());
        Ok(())
    }
}
