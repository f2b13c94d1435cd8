//! Auth's input types, valid by construction: parse at the edge, then trust.

use std::fmt;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use keel_platform::{Role, error::FieldViolation};
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use unicode_normalization::UnicodeNormalization as _;

/// A normalized, plausible email address.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Normalizes `raw` (NFKC, so a fullwidth or otherwise compatible form is
    /// the address it stands for; trimmed; lower-cased), then checks its
    /// shape: one `@`, a local part of at most 64 bytes, a domain with a dot,
    /// no spaces or control characters, at most 254 bytes in all (RFC 5321
    /// limits).
    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        let invalid = |why: &str| FieldViolation {
            field: "email".into(),
            description: why.into(),
        };
        let compatible: String = raw.nfkc().collect();
        // Lower-casing can leave a string that is not NFKC; normalize again.
        let email: String = compatible.trim().to_lowercase().nfkc().collect();
        if email.is_empty() {
            return Err(invalid("is required"));
        }
        if email.len() > 254 {
            return Err(invalid("must be at most 254 bytes"));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("must not contain spaces or control characters"));
        }
        let Some((local, domain)) = email.split_once('@') else {
            return Err(invalid("must contain @"));
        };
        if local.is_empty() || local.len() > 64 {
            return Err(invalid("must have 1 to 64 bytes before @"));
        }
        let labels_ok = domain
            .split('.')
            .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'));
        if domain.contains('@') || !domain.contains('.') || !labels_ok {
            return Err(invalid("must have a domain such as example.com after @"));
        }
        Ok(Email(email))
    }

    /// The normalized address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its confusable skeleton (Unicode UTS #39): addresses that look alike,
    /// such as `admin@` and `аdmin@` with a Cyrillic `а`, share one, and only
    /// one account may have it.
    pub fn skeleton(&self) -> String {
        unicode_security::skeleton(&self.0).collect()
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.0)
    }
}

/// The fewest characters a password may have.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// The most bytes a password may have: longer input is refused before any
/// hashing, so nobody can make the server hash megabytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A password of acceptable length. Its `Debug` never shows it.
#[derive(Debug, Clone)]
pub struct Password(SecretString);

impl Password {
    /// Accepts `raw` if it has at least 8 characters and at most 1 KiB.
    pub fn parse(field: &str, raw: String) -> Result<Self, FieldViolation> {
        let invalid = |why: String| FieldViolation {
            field: field.into(),
            description: why,
        };
        if raw.len() > MAX_PASSWORD_BYTES {
            return Err(invalid(format!("must be at most {MAX_PASSWORD_BYTES} bytes")));
        }
        if raw.chars().count() < MIN_PASSWORD_CHARS {
            return Err(invalid(format!("must have at least {MIN_PASSWORD_CHARS} characters")));
        }
        Ok(Password(raw.into()))
    }

    /// Accepts any `raw` up to 1 KiB: for checking a password at login,
    /// where the length rules of today may be newer than the password.
    pub fn for_check(field: &str, raw: String) -> Result<Self, FieldViolation> {
        if raw.len() > MAX_PASSWORD_BYTES {
            return Err(FieldViolation {
                field: field.into(),
                description: format!("must be at most {MAX_PASSWORD_BYTES} bytes"),
            });
        }
        Ok(Password(raw.into()))
    }

    /// The secret bytes, for the hasher only.
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret().as_bytes()
    }
}

/// A non-empty set of roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles(Vec<Role>);

impl Roles {
    /// Deduplicates `roles`; refuses an empty set.
    pub fn new(mut roles: Vec<Role>) -> Result<Self, FieldViolation> {
        roles.sort();
        roles.dedup();
        if roles.is_empty() {
            return Err(FieldViolation {
                field: "roles".into(),
                description: "must name at least one role".into(),
            });
        }
        Ok(Roles(roles))
    }

    /// Reads roles as stored; unknown names are dropped.
    pub fn from_names(names: &[String]) -> Self {
        let mut roles: Vec<Role> = names.iter().filter_map(|n| Role::parse(n)).collect();
        roles.sort();
        roles.dedup();
        Roles(roles)
    }

    /// The roles.
    pub fn as_slice(&self) -> &[Role] {
        &self.0
    }

    /// The role names, as stored and put in tokens.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|r| r.as_str().to_owned()).collect()
    }
}

/// A secret handed to a client once (refresh token, reset or verification
/// token): 256 random bits, base64url. Only its hash is stored; its `Debug`
/// never shows it.
#[derive(Debug, Clone)]
pub struct OpaqueToken(SecretString);

impl OpaqueToken {
    /// A fresh random token.
    pub fn generate() -> anyhow::Result<Self> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("the system random source failed"))?;
        Ok(OpaqueToken(URL_SAFE_NO_PAD.encode(bytes).into()))
    }

    /// A token presented by a client; refused if it cannot be one of ours.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        let decoded = URL_SAFE_NO_PAD.decode(raw.trim()).ok();
        match decoded {
            Some(bytes) if bytes.len() == 32 => Ok(OpaqueToken(raw.trim().into())),
            _ => Err(FieldViolation {
                field: field.into(),
                description: if raw.is_empty() {
                    "is required".into()
                } else {
                    "is not a valid token".into()
                },
            }),
        }
    }

    /// The SHA-256 of the token: what the database keeps.
    pub fn hash(&self) -> Vec<u8> {
        Sha256::digest(self.0.expose_secret().as_bytes()).to_vec()
    }

    /// The token itself, to hand to the client.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized() {
        let email = Email::parse("  Ada.Lovelace@Example.COM ").expect("valid");
        assert_eq!(email.as_str(), "ada.lovelace@example.com");
    }

    #[test]
    fn compatible_forms_are_the_same_address() -> Result<(), FieldViolation> {
        // Fullwidth letters and the fullwidth at sign.
        assert_eq!(Email::parse("ＡＤＭＩＮ＠example.com")?.as_str(), "admin@example.com");
        // A ligature and a circled letter.
        assert_eq!(Email::parse("ﬁle@ⓔxample.com")?.as_str(), "file@example.com");
        Ok(())
    }

    #[test]
    fn lookalike_addresses_share_a_skeleton() -> Result<(), FieldViolation> {
        let latin = Email::parse("admin@example.com")?;
        for lookalike in [
            "\u{0430}dmin@example.com", // Cyrillic а
            "admin@ex\u{0430}mple.com",
            "\u{03b1}dmin@example.com", // Greek α
            "adm\u{0456}n@example.com", // Cyrillic і
            "admin@examp\u{04cf}e.com", // Cyrillic ӏ
        ] {
            let other = Email::parse(lookalike)?;
            assert_ne!(other.as_str(), latin.as_str(), "{lookalike} is another string");
            assert_eq!(other.skeleton(), latin.skeleton(), "{lookalike} looks like admin@");
        }
        assert_ne!(Email::parse("bob@example.com")?.skeleton(), latin.skeleton());
        Ok(())
    }

    #[test]
    fn malformed_emails_are_refused() {
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a da@example.com",
            "a@b@c.com",
            "ada@-x.com",
            "ada@x..com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(Email::parse(&long_local).is_err());
    }

    #[test]
    fn passwords_have_bounds() {
        assert!(Password::parse("password", "short".into()).is_err());
        assert!(Password::parse("password", "12345678".into()).is_ok());
        let passphrase = "correct horse battery staple ".repeat(3);
        assert!(passphrase.len() > 64);
        assert!(Password::parse("password", passphrase).is_ok());
        assert!(Password::parse("password", "x".repeat(MAX_PASSWORD_BYTES)).is_ok());
        assert!(Password::parse("password", "x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        // Eight characters, even when they take more bytes.
        assert!(Password::parse("password", "ééééééé".into()).is_err());
        assert!(Password::parse("password", "éééééééé".into()).is_ok());
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let password = Password::parse("password", "hunter2hunter2".into()).expect("valid");
        assert!(!format!("{password:?}").contains("hunter2"));
        let token = OpaqueToken::generate().expect("random");
        assert!(!format!("{token:?}").contains(token.expose()));
    }

    #[test]
    fn tokens_round_trip_and_hash() {
        let token = OpaqueToken::generate().expect("random");
        let parsed = OpaqueToken::parse("token", token.expose()).expect("ours");
        assert_eq!(parsed.hash(), token.hash());
        assert_eq!(token.hash().len(), 32);
        assert!(OpaqueToken::parse("token", "not-a-token").is_err());
    }

    #[test]
    fn roles_are_a_non_empty_set() {
        assert!(Roles::new(vec![]).is_err());
        let roles = Roles::new(vec![Role::Admin, Role::User, Role::Admin]).expect("valid");
        assert_eq!(roles.names(), vec!["user", "admin"]);
    }
}
