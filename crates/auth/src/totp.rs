//! TOTP (RFC 6238), auth's second factor: the secret an authenticator app
//! shares with auth, the `otpauth://` URI that hands it over, and checking a
//! code so that each one is accepted once.
//!
//! HMAC-SHA-1, six digits, 30-second steps: what every authenticator app
//! does (some accept SHA-256 in the URI and silently use SHA-1). The code
//! arithmetic is `totp-rs`'s; the secret is drawn here, from the system's
//! random source, and sealed at rest under the key-encryption key that seals
//! the signing keys (see [`crate::keys`]).

use anyhow::Context as _;
use keel_platform::{db::SecretBytes, sealing::SealingKey};
use totp_rs::{Algorithm, Builder, Totp};
use uuid::Uuid;

/// Digits of a code.
pub const DIGITS: u8 = 6;
/// Seconds per time step.
pub const PERIOD_SECS: u64 = 30;
/// Steps either side of the current one whose code is accepted too: a clock
/// that drifts, a code typed as it turned over (RFC 6238 §5.2 recommends
/// at most one).
pub const DRIFT_STEPS: u64 = 1;
/// The secret's length: 160 bits, as RFC 4226 recommends (HMAC-SHA-1's
/// output).
pub const SECRET_LEN: usize = 20;

/// A user's TOTP secret. Its `Debug` never shows it.
#[derive(Debug, Clone)]
pub struct TotpSecret(SecretBytes);

/// What checking a code found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    /// It is the code of this step (within the drift), later than the last
    /// one accepted: store the step, so it is not accepted again.
    Accepted {
        /// Unix time / [`PERIOD_SECS`].
        step: i64,
    },
    /// It is a code of the drift window, but of a step at or before the last
    /// one accepted: a replay.
    Reused,
    /// It is no code of the window.
    Wrong,
}

impl TotpSecret {
    /// A fresh random secret.
    pub fn generate() -> anyhow::Result<Self> {
        let mut bytes = vec![0u8; SECRET_LEN];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("the system random source failed"))?;
        Ok(TotpSecret(bytes.into()))
    }

    /// The secret as the user types it into an app: base32, no padding.
    pub fn base32(&self) -> String {
        totp_rs::Secret::from(self.0.expose()).to_base32()
    }

    /// The `otpauth://totp/<issuer>:<account>?secret=…` URI (Google's Key
    /// URI format) that an app reads from a QR code.
    pub fn uri(&self, issuer: &str, account: &str) -> anyhow::Result<String> {
        let totp = Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(DIGITS)
            .with_step_duration(PERIOD_SECS)
            .with_secret(self.0.expose())
            .with_issuer(Some(issuer))
            .with_account_name(account)
            .build()
            .context("the second factor's issuer or account name cannot go in an otpauth URI")?;
        let uri = totp.to_url().context("writing the otpauth URI")?;
        // totp-rs leaves out what equals the format's defaults; Keel names
        // them, so no app has to assume them.
        Ok(format!("{uri}&algorithm=SHA1&digits={DIGITS}&period={PERIOD_SECS}"))
    }

    /// Checks `code` at Unix time `now`: the code of the current step or of
    /// one [`DRIFT_STEPS`] away, and of a step later than `last_used_step`.
    pub fn check(&self, code: &str, now: i64, last_used_step: Option<i64>) -> anyhow::Result<CodeCheck> {
        Ok(check(&totp(self.0.expose(), DIGITS)?, code, now, last_used_step))
    }

    /// The secret as stored: sealed under `kek` when one is given (and the
    /// fingerprint of the key that sealed it), else in the clear.
    pub fn seal(&self, user_id: Uuid, kek: Option<&SealingKey>) -> anyhow::Result<(SecretBytes, Option<String>)> {
        match kek {
            Some(kek) => Ok((
                kek.seal(self.0.expose(), &sealing_context(user_id))?.into(),
                Some(kek.id().to_owned()),
            )),
            None => Ok((self.0.clone(), None)),
        }
    }

    /// Opens a secret stored for `user_id` by [`TotpSecret::seal`]; refused,
    /// as a signing key would be, when it was sealed with another
    /// key-encryption key or with one auth no longer has.
    pub fn open(
        stored: &SecretBytes,
        sealed_with: Option<&str>,
        user_id: Uuid,
        kek: Option<&SealingKey>,
    ) -> anyhow::Result<Self> {
        match (sealed_with, kek) {
            (None, _) => Ok(TotpSecret(stored.clone())),
            (Some(id), Some(kek)) if id == kek.id() => Ok(TotpSecret(
                kek.open(stored.expose(), &sealing_context(user_id))
                    .with_context(|| format!("opening the second factor of user {user_id}"))?
                    .into(),
            )),
            (Some(id), Some(kek)) => anyhow::bail!(
                "the second factor of user {user_id} is sealed with key-encryption key {id}, \
                 but KEEL_AUTH_KEY_ENCRYPTION_KEY is {}",
                kek.id()
            ),
            (Some(id), None) => anyhow::bail!(
                "the second factor of user {user_id} is sealed with key-encryption key {id}: \
                 set KEEL_AUTH_KEY_ENCRYPTION_KEY"
            ),
        }
    }
}

/// What a sealed secret is bound to: its user, so a sealed secret copied onto
/// another user's row does not open.
fn sealing_context(user_id: Uuid) -> Vec<u8> {
    format!("keel totp secret\0{user_id}").into_bytes()
}

/// The generator for `secret` with `digits`, checking one step at a time
/// (the window is [`check`]'s, so it can tell a replay from a wrong code).
fn totp(secret: &[u8], digits: u8) -> anyhow::Result<Totp> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(digits)
        .with_step_duration(PERIOD_SECS)
        .with_skew(0)
        .with_secret(secret)
        .build()
        .context("a TOTP secret of an unusable length")
}

/// The code check itself: every step of the window is tried (none is
/// skipped once one matches, so the time taken says nothing), each compared
/// in constant time by `totp-rs`.
fn check(totp: &Totp, code: &str, now: i64, last_used_step: Option<i64>) -> CodeCheck {
    let Ok(now) = u64::try_from(now) else {
        return CodeCheck::Wrong;
    };
    let current = now / PERIOD_SECS;
    let (mut matched, mut fresh) = (false, None);
    for step in current.saturating_sub(DRIFT_STEPS)..=current.saturating_add(DRIFT_STEPS) {
        let Some(at) = step.checked_mul(PERIOD_SECS) else {
            continue;
        };
        if totp.check(code, at).is_none() {
            continue;
        }
        matched = true;
        let Ok(step) = i64::try_from(step) else { continue };
        if fresh.is_none() && last_used_step.is_none_or(|last| step > last) {
            fresh = Some(step);
        }
    }
    match (fresh, matched) {
        (Some(step), _) => CodeCheck::Accepted { step },
        (None, true) => CodeCheck::Reused,
        (None, false) => CodeCheck::Wrong,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B: the SHA-1 seed, the ASCII "12345678901234567890".
    const RFC_SEED: &[u8] = b"12345678901234567890";

    #[test]
    fn codes_match_rfc_6238_appendix_b() -> anyhow::Result<()> {
        // (time, TOTP) for SHA-1, eight digits, as the RFC publishes them.
        let vectors: [(i64, &str); 6] = [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ];
        let totp = totp(RFC_SEED, 8)?;
        for (time, code) in vectors {
            let step = time / 30;
            assert_eq!(
                check(&totp, code, time, None),
                CodeCheck::Accepted { step },
                "T = {time}"
            );
            // A step away is within the drift; further is not.
            assert_eq!(check(&totp, code, time + 30, None), CodeCheck::Accepted { step });
            assert_eq!(check(&totp, code, time + 90, None), CodeCheck::Wrong, "T = {time}");
            // Once its step is spent, the code is a replay.
            assert_eq!(check(&totp, code, time, Some(step)), CodeCheck::Reused);
        }
        Ok(())
    }

    #[test]
    fn a_code_is_accepted_once_and_never_before_the_last_one() -> anyhow::Result<()> {
        let secret = TotpSecret(RFC_SEED.to_vec().into());
        let totp = totp(RFC_SEED, DIGITS)?;
        let now = 1_700_000_000;
        let step = now / 30;
        let code = totp.generate(u64::try_from(now)?).to_string();
        assert_eq!(secret.check(&code, now, None)?, CodeCheck::Accepted { step });
        assert_eq!(secret.check(&code, now, Some(step))?, CodeCheck::Reused);
        // The previous step's code, after the current one was used: refused.
        let previous = totp.generate(u64::try_from(now - 30)?).to_string();
        assert_eq!(secret.check(&previous, now, Some(step))?, CodeCheck::Reused);
        // The next step's code is still good (a clock running ahead).
        let next = totp.generate(u64::try_from(now + 30)?).to_string();
        assert_eq!(
            secret.check(&next, now, Some(step))?,
            CodeCheck::Accepted { step: step + 1 }
        );
        for wrong in ["000000", "12345", "1234567", "12345a", "", "+12345"] {
            if wrong != code {
                assert_eq!(secret.check(wrong, now, None)?, CodeCheck::Wrong, "{wrong:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn the_uri_is_googles_key_uri_format_and_gives_the_same_codes() -> anyhow::Result<()> {
        let secret = TotpSecret::generate()?;
        let uri = secret.uri("Keel", "ada@example.com")?;
        let base32 = secret.base32();
        assert_eq!(
            uri,
            format!(
                "otpauth://totp/Keel:ada%40example.com?secret={base32}&issuer=Keel&algorithm=SHA1&digits=6&period=30"
            )
        );
        let read = Totp::from_url(&uri)?;
        let now = 1_700_000_000;
        let code = read.generate(now).to_string();
        assert!(matches!(
            secret.check(&code, i64::try_from(now)?, None)?,
            CodeCheck::Accepted { .. }
        ));
        assert!(
            secret.uri("Ke:el", "ada@example.com").is_err(),
            "a colon splits the label"
        );
        Ok(())
    }

    #[test]
    fn sealed_secrets_open_only_for_their_user_with_their_key() -> anyhow::Result<()> {
        let (kek, _) = SealingKey::generate()?;
        let secret = TotpSecret::generate()?;
        let user = Uuid::now_v7();
        let (stored, sealed_with) = secret.seal(user, Some(&kek))?;
        assert_eq!(sealed_with.as_deref(), Some(kek.id()));
        assert!(
            !stored
                .expose()
                .windows(8)
                .any(|w| secret.0.expose().windows(8).any(|s| s == w))
        );
        let opened = TotpSecret::open(&stored, sealed_with.as_deref(), user, Some(&kek))?;
        assert_eq!(opened.base32(), secret.base32());
        assert!(TotpSecret::open(&stored, sealed_with.as_deref(), Uuid::now_v7(), Some(&kek)).is_err());
        let (other, _) = SealingKey::generate()?;
        let refused = TotpSecret::open(&stored, sealed_with.as_deref(), user, Some(&other)).expect_err("another key");
        assert!(
            refused.to_string().contains("KEEL_AUTH_KEY_ENCRYPTION_KEY is"),
            "{refused}"
        );
        let refused = TotpSecret::open(&stored, sealed_with.as_deref(), user, None).expect_err("no key");
        assert!(
            refused.to_string().contains("set KEEL_AUTH_KEY_ENCRYPTION_KEY"),
            "{refused}"
        );
        // Without a key-encryption key it is stored as it is.
        let (plain, none) = secret.seal(user, None)?;
        assert_eq!(none, None);
        assert_eq!(TotpSecret::open(&plain, None, user, None)?.base32(), secret.base32());
        Ok(())
    }

    #[test]
    fn secrets_never_show_in_debug() -> anyhow::Result<()> {
        let secret = TotpSecret::generate()?;
        assert!(!format!("{secret:?}").contains(&secret.base32()));
        Ok(())
    }
}
