//! Accounts' input types, valid by construction, and the stored names of
//! what a movement is and why a debit key is closed.

use diesel::{deserialize::FromSqlRow, expression::AsExpression};
use keel::common::v1::Money;
use keel_platform::error::FieldViolation;

use crate::schema::sql_types;

/// The name accounts is registered under, and the source of its events.
pub const NAME: &str = "accounts";

fn violation(field: &str, reason: &'static str, description: impl Into<String>) -> FieldViolation {
    FieldViolation::new(field, reason, description)
}

/// An ISO 4217 alphabetic currency code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currency(String);

impl Currency {
    /// Accepts three upper-case ASCII letters.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        if raw.len() == 3 && raw.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Currency(raw.to_owned()))
        } else {
            Err(violation(
                field,
                "CURRENCY_INVALID",
                "must be an ISO 4217 code such as USD",
            ))
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The largest amount one movement may carry (10^15 minor units), far below
/// where sums could overflow.
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;

/// A positive amount of money in minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amount {
    /// Minor units, > 0.
    pub minor: i64,
    /// Its currency.
    pub currency: Currency,
}

impl Amount {
    /// Reads a `Money` that must be positive.
    pub fn parse(field: &str, money: Option<&Money>) -> Result<Self, FieldViolation> {
        let money = money.ok_or_else(|| violation(field, "required", "is required"))?;
        if money.amount_minor <= 0 {
            return Err(violation(
                &format!("{field}.amount_minor"),
                "AMOUNT_OUT_OF_RANGE",
                "must be positive",
            ));
        }
        if money.amount_minor > MAX_AMOUNT_MINOR {
            return Err(violation(
                &format!("{field}.amount_minor"),
                "AMOUNT_OUT_OF_RANGE",
                format!("must be at most {MAX_AMOUNT_MINOR}"),
            ));
        }
        let currency = Currency::parse(&format!("{field}.currency_code"), &money.currency_code)?;
        Ok(Amount {
            minor: money.amount_minor,
            currency,
        })
    }
}

/// What a ledger entry does to the balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Money in, from an administrator or a payment.
    Deposit,
    /// Money out, for a purchase.
    Debit,
    /// Money back, for a cancelled purchase.
    Refund,
}

impl Kind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deposit => "deposit",
            Kind::Debit => "debit",
            Kind::Refund => "refund",
        }
    }

    /// Reads a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "deposit" => Some(Kind::Deposit),
            "debit" => Some(Kind::Debit),
            "refund" => Some(Kind::Refund),
            _ => None,
        }
    }

    /// The signed change for `amount` minor units.
    pub fn delta(self, amount: i64) -> i64 {
        match self {
            Kind::Debit => -amount,
            Kind::Deposit | Kind::Refund => amount,
        }
    }
}

/// Whether a debit key that can never debit was declined or voided (a
/// Postgres enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, AsExpression, FromSqlRow)]
#[diesel(sql_type = sql_types::DebitKeyState)]
pub enum DebitKeyState {
    /// A Debit with it was declined: its retries answer the same decline.
    Declined,
    /// VoidDebit closed it before it debited.
    Voided,
}

impl DebitKeyState {
    /// Every state.
    pub const ALL: [DebitKeyState; 2] = [DebitKeyState::Declined, DebitKeyState::Voided];

    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            DebitKeyState::Declined => "declined",
            DebitKeyState::Voided => "voided",
        }
    }
}

keel_platform::pg_enum!(DebitKeyState, sql_types::DebitKeyState, "debit key state");

/// Why a Debit was declined, stored with its key so that retries answer the
/// same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decline {
    /// The balance was lower than the amount.
    InsufficientFunds,
    /// The account holds another currency.
    CurrencyMismatch,
    /// There is no such account.
    AccountNotFound,
}

impl Decline {
    /// The stored reason.
    pub const fn as_str(self) -> &'static str {
        match self {
            Decline::InsufficientFunds => "INSUFFICIENT_FUNDS",
            Decline::CurrencyMismatch => "CURRENCY_MISMATCH",
            Decline::AccountNotFound => "ACCOUNT_NOT_FOUND",
        }
    }

    /// Reads a stored reason.
    pub fn parse(reason: &str) -> Option<Self> {
        [
            Decline::InsufficientFunds,
            Decline::CurrencyMismatch,
            Decline::AccountNotFound,
        ]
        .into_iter()
        .find(|decline| decline.as_str() == reason)
    }
}

/// The stored reason of a voided debit key.
pub const VOIDED: &str = "VOIDED";

/// An idempotency key: 1 to 128 printable characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// Accepts a key of 1 to 128 bytes without control characters; `field`
    /// names it in the violation.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(violation(
                field,
                "required",
                "is required: retries with the same key apply once",
            ));
        }
        if raw.len() > 128 || raw.chars().any(char::is_control) {
            return Err(violation(
                field,
                "REQUEST_ID_INVALID",
                "must be at most 128 printable bytes",
            ));
        }
        Ok(RequestId(raw.to_owned()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A short free text (reference, reason): at most 256 bytes, no control
/// characters.
pub fn note(field: &str, raw: &str) -> Result<String, FieldViolation> {
    if raw.len() > 256 || raw.chars().any(char::is_control) {
        return Err(violation(field, "NOTE_INVALID", "must be at most 256 printable bytes"));
    }
    Ok(raw.to_owned())
}

/// A display name: trimmed, at most 100 characters, no control characters.
pub fn display_name(raw: &str) -> Result<String, FieldViolation> {
    let name = raw.trim();
    if name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(violation(
            "account.display_name",
            "DISPLAY_NAME_INVALID",
            "must be at most 100 printable characters",
        ));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(amount_minor: i64, currency_code: &str) -> Money {
        Money {
            amount_minor,
            currency_code: currency_code.into(),
        }
    }

    #[test]
    fn amounts_are_positive_and_bounded_with_a_real_currency() {
        assert!(Amount::parse("amount", Some(&money(100, "USD"))).is_ok());
        assert!(Amount::parse("amount", Some(&money(0, "USD"))).is_err());
        assert!(Amount::parse("amount", Some(&money(-5, "USD"))).is_err());
        assert!(Amount::parse("amount", Some(&money(MAX_AMOUNT_MINOR + 1, "USD"))).is_err());
        assert!(Amount::parse("amount", Some(&money(100, "usd"))).is_err());
        assert!(Amount::parse("amount", Some(&money(100, "EURO"))).is_err());
        assert!(Amount::parse("amount", None).is_err());
    }

    #[test]
    fn kinds_sign_their_delta() {
        assert_eq!(Kind::Debit.delta(5), -5);
        assert_eq!(Kind::Refund.delta(5), 5);
        for kind in [Kind::Deposit, Kind::Debit, Kind::Refund] {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn declines_read_back_what_they_store() {
        for decline in [
            Decline::InsufficientFunds,
            Decline::CurrencyMismatch,
            Decline::AccountNotFound,
        ] {
            assert_eq!(Decline::parse(decline.as_str()), Some(decline));
        }
        assert_eq!(Decline::parse(VOIDED), None, "a voided key was not declined");
    }

    #[test]
    fn request_ids_and_names_are_bounded() {
        assert!(RequestId::parse("request_id", "").is_err());
        assert!(RequestId::parse("request_id", &"x".repeat(129)).is_err());
        assert_eq!(
            RequestId::parse("request_id", " a ")
                .map(|r| r.as_str().to_owned())
                .ok()
                .as_deref(),
            Some("a")
        );
        assert!(display_name(&"n".repeat(101)).is_err());
        assert_eq!(display_name("  Ada ").ok().as_deref(), Some("Ada"));
        assert!(note("reason", "line\nbreak").is_err());
    }
}
