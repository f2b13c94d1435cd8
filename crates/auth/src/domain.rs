//! Auth's input types, valid by construction: parse at the edge, then trust.

use std::fmt;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use keel_platform::{Role, error::FieldViolation};
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use unicode_normalization::UnicodeNormalization as _;
use uuid::Uuid;

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
        let invalid = |why: &str| FieldViolation::new("email", "EMAIL_INVALID", why);
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
        if raw.len() > MAX_PASSWORD_BYTES {
            return Err(too_long(field));
        }
        if raw.chars().count() < MIN_PASSWORD_CHARS {
            return Err(FieldViolation::new(
                field,
                "PASSWORD_TOO_SHORT",
                format!("must be at least {MIN_PASSWORD_CHARS} characters"),
            ));
        }
        Ok(Password(raw.into()))
    }

    /// Accepts any `raw` up to 1 KiB: for checking a password at login,
    /// where the length rules of today may be newer than the password.
    pub fn for_check(field: &str, raw: String) -> Result<Self, FieldViolation> {
        if raw.len() > MAX_PASSWORD_BYTES {
            return Err(too_long(field));
        }
        Ok(Password(raw.into()))
    }

    /// The secret bytes, for the hasher only.
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret().as_bytes()
    }
}

fn too_long(field: &str) -> FieldViolation {
    FieldViolation::new(
        field,
        "PASSWORD_TOO_LONG",
        format!("must be at most {MAX_PASSWORD_BYTES} bytes"),
    )
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
            return Err(FieldViolation::new(
                "roles",
                "repeated.min_items",
                "must name at least one role",
            ));
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
            _ if raw.is_empty() => Err(FieldViolation::new(field, "required", "is required")),
            _ => Err(FieldViolation::new(field, "TOKEN_INVALID", "is not a valid token")),
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

/// A code from an authenticator app (TOTP, RFC 6238): six digits. Its
/// `Debug` never shows it.
#[derive(Debug, Clone)]
pub struct TotpCode(SecretString);

impl TotpCode {
    /// Accepts exactly six ASCII digits.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        if raw.len() == usize::from(crate::totp::DIGITS) && raw.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(TotpCode(raw.into()));
        }
        Err(FieldViolation::new(
            field,
            "CODE_INVALID",
            format!("must be the {} digits the authenticator app shows", crate::totp::DIGITS),
        ))
    }

    /// The code, for the check only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// How many recovery codes a user gets when their second factor is enabled.
pub const RECOVERY_CODE_COUNT: usize = 10;

/// The symbols of recovery codes: Crockford's base32 (no i, l, o or u, so
/// nothing reads as another symbol), lower case.
const RECOVERY_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Symbols in a recovery code: 16 of 32, 80 random bits.
const RECOVERY_CODE_SYMBOLS: usize = 16;

/// A single-use code that stands in for the authenticator app when it is
/// lost: 80 random bits, shown as `xxxx-xxxx-xxxx-xxxx`. Only its hash is
/// stored; its `Debug` never shows it.
#[derive(Debug, Clone)]
pub struct RecoveryCode(SecretString);

impl RecoveryCode {
    /// A fresh random code.
    pub fn generate() -> anyhow::Result<Self> {
        let mut bytes = [0u8; RECOVERY_CODE_SYMBOLS];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("the system random source failed"))?;
        // 256 is a multiple of 32: the low five bits of a random byte are a
        // uniform symbol.
        let symbols: String = bytes
            .iter()
            .map(|b| char::from(RECOVERY_ALPHABET[usize::from(b & 0x1f)]))
            .collect();
        Ok(RecoveryCode(symbols.into()))
    }

    /// A code as a person typed it: any case, with or without the dashes or
    /// spaces between groups, `i`/`l` read as `1` and `o` as `0`.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        let symbols: String = raw
            .chars()
            .filter(|c| *c != '-' && !c.is_whitespace())
            .map(|c| match c.to_ascii_lowercase() {
                'i' | 'l' => '1',
                'o' => '0',
                other => other,
            })
            .collect();
        let ours = symbols.len() == RECOVERY_CODE_SYMBOLS && symbols.bytes().all(|b| RECOVERY_ALPHABET.contains(&b));
        if !ours {
            return Err(FieldViolation::new(
                field,
                "RECOVERY_CODE_INVALID",
                "is not a recovery code (16 letters and digits, as xxxx-xxxx-xxxx-xxxx)",
            ));
        }
        Ok(RecoveryCode(symbols.into()))
    }

    /// What the database keeps: the SHA-256 of the code bound to its user.
    /// A plain hash is enough: 80 random bits cannot be searched for from a
    /// stolen hash the way a password can (argon2 would only cost every
    /// check), and binding the user makes each user's hashes their own.
    pub fn hash(&self, user_id: Uuid) -> Vec<u8> {
        Sha256::new()
            .chain_update(b"keel recovery code\0")
            .chain_update(user_id.as_bytes())
            .chain_update(self.0.expose_secret().as_bytes())
            .finalize()
            .to_vec()
    }

    /// The code in groups of four, to show the user once.
    pub fn display(&self) -> String {
        let symbols = self.0.expose_secret().as_bytes();
        symbols
            .chunks(4)
            .map(|group| String::from_utf8_lossy(group).into_owned())
            .collect::<Vec<_>>()
            .join("-")
    }
}

/// The second factor a caller presents: a code from the authenticator app,
/// or one of the recovery codes.
#[derive(Debug, Clone)]
pub enum SecondFactor {
    /// A current code.
    Code(TotpCode),
    /// A recovery code, spent by its use.
    RecoveryCode(RecoveryCode),
}

impl SecondFactor {
    /// Exactly one of `code` and `recovery_code` (a request's oneof).
    pub fn parse(code: Option<&str>, recovery_code: Option<&str>) -> Result<Self, FieldViolation> {
        match (code, recovery_code) {
            (Some(code), _) => TotpCode::parse("code", code).map(SecondFactor::Code),
            (None, Some(recovery)) => RecoveryCode::parse("recovery_code", recovery).map(SecondFactor::RecoveryCode),
            (None, None) => Err(FieldViolation::new(
                "code",
                "required",
                "a code or a recovery_code is required",
            )),
        }
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
    fn recovery_codes_read_back_as_typed_and_hash_per_user() -> Result<(), FieldViolation> {
        let code = RecoveryCode::generate().expect("random");
        let shown = code.display();
        assert_eq!(shown.len(), 19, "{shown}");
        assert_eq!(shown.matches('-').count(), 3, "{shown}");
        let user = Uuid::now_v7();
        for typed in [
            shown.clone(),
            shown.to_uppercase(),
            shown.replace('-', " "),
            shown.replace('-', ""),
        ] {
            assert_eq!(
                RecoveryCode::parse("recovery_code", &typed)?.hash(user),
                code.hash(user),
                "{typed}"
            );
        }
        assert_ne!(code.hash(Uuid::now_v7()), code.hash(user), "bound to the user");
        assert_eq!(
            RecoveryCode::parse("recovery_code", "0ILO-0000-0000-0000")?.display(),
            "0110-0000-0000-0000",
            "lookalikes read as digits"
        );
        assert!(RecoveryCode::parse("recovery_code", "uuuu-0000-0000-0000").is_err());
        assert!(RecoveryCode::parse("recovery_code", "0000-0000-0000").is_err());
        assert!(!format!("{code:?}").contains(&shown.replace('-', "")), "Debug hides it");
        let codes: std::collections::BTreeSet<String> = (0..100)
            .map(|_| RecoveryCode::generate().expect("random").display())
            .collect();
        assert_eq!(codes.len(), 100);
        Ok(())
    }

    #[test]
    fn a_second_factor_is_a_code_or_a_recovery_code() {
        assert!(matches!(
            SecondFactor::parse(Some("012345"), None),
            Ok(SecondFactor::Code(_))
        ));
        assert!(SecondFactor::parse(Some("01234"), None).is_err());
        assert!(SecondFactor::parse(Some("01234a"), None).is_err());
        assert!(matches!(
            SecondFactor::parse(None, Some("abcd-efgh-jkmn-pqrs")),
            Ok(SecondFactor::RecoveryCode(_))
        ));
        assert!(SecondFactor::parse(None, None).is_err());
    }

    #[test]
    fn roles_are_a_non_empty_set() {
        assert!(Roles::new(vec![]).is_err());
        let roles = Roles::new(vec![Role::Admin, Role::User, Role::Admin]).expect("valid");
        assert_eq!(roles.names(), vec!["user", "admin"]);
    }
}
