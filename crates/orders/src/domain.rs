//! Orders' input types, valid by construction: each `parse` names the field
//! it refuses, so a handler reports every bad field at once.

use keel::common::v1::Money;

/// The name orders is registered under, and the source of its events.
pub const NAME: &str = "orders";
use keel_platform::error::FieldViolation;

fn violation(field: &str, reason: &'static str, description: impl Into<String>) -> FieldViolation {
    FieldViolation::new(field, reason, description)
}

/// The largest price one unit may have: the most any Money in a request may
/// carry (10^15 minor units). Totals are summed with overflow checks and
/// bounded by [`MAX_TOTAL_MINOR`].
pub const MAX_PRICE_MINOR: i64 = MAX_TOTAL_MINOR;

/// The most lines one order may have.
pub const MAX_LINES: usize = 100;

/// The most units of one product one line may ask for.
pub const MAX_QUANTITY: i32 = 1000;

/// A unit price: positive minor units in an ISO 4217 currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    /// Minor units, > 0.
    pub minor: i64,
    /// Three upper-case letters.
    pub currency: String,
}

impl Price {
    /// Reads a required `Money` field.
    pub fn parse(field: &str, money: Option<&Money>) -> Result<Self, FieldViolation> {
        let money = money.ok_or_else(|| violation(field, "required", "is required"))?;
        if money.amount_minor <= 0 || money.amount_minor > MAX_PRICE_MINOR {
            return Err(violation(
                &format!("{field}.amount_minor"),
                "PRICE_OUT_OF_RANGE",
                format!("must be between 1 and {MAX_PRICE_MINOR}"),
            ));
        }
        let code = &money.currency_code;
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(violation(
                &format!("{field}.currency_code"),
                "CURRENCY_INVALID",
                "must be an ISO 4217 code such as USD",
            ));
        }
        Ok(Price {
            minor: money.amount_minor,
            currency: code.clone(),
        })
    }
}

/// A product name: 1 to 200 characters after trimming, no control characters.
pub fn product_name(field: &str, raw: &str) -> Result<String, FieldViolation> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(violation(
            field,
            "NAME_INVALID",
            "must be 1 to 200 printable characters",
        ));
    }
    Ok(name.to_owned())
}

/// A description: at most 4000 characters (line breaks allowed).
pub fn description(field: &str, raw: &str) -> Result<String, FieldViolation> {
    let bad_control = raw
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t');
    if raw.chars().count() > 4000 || bad_control {
        return Err(violation(
            field,
            "DESCRIPTION_INVALID",
            "must be at most 4000 characters",
        ));
    }
    Ok(raw.to_owned())
}

/// The most units a product may hold, and the most one adjustment may move:
/// far below where sums of stock overflow.
pub const MAX_STOCK: i64 = 1_000_000_000_000;

/// The largest order total (10^15 minor units): the most one accounts
/// movement may carry, so every total placed can be charged.
pub const MAX_TOTAL_MINOR: i64 = 1_000_000_000_000_000;

/// A stock count: 0 to [`MAX_STOCK`].
pub fn stock(field: &str, raw: i64) -> Result<i64, FieldViolation> {
    if !(0..=MAX_STOCK).contains(&raw) {
        return Err(violation(
            field,
            "STOCK_OUT_OF_RANGE",
            format!("must be between 0 and {MAX_STOCK}"),
        ));
    }
    Ok(raw)
}

/// A stock adjustment: not zero, at most [`MAX_STOCK`] either way.
pub fn stock_delta(field: &str, raw: i64) -> Result<i64, FieldViolation> {
    if raw == 0 || raw.unsigned_abs() > MAX_STOCK.unsigned_abs() {
        return Err(violation(
            field,
            "STOCK_DELTA_OUT_OF_RANGE",
            format!("must not be zero, and at most {MAX_STOCK} either way"),
        ));
    }
    Ok(raw)
}

/// An idempotency key: 1 to 128 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// Reads field `field`.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        if raw.is_empty() {
            return Err(violation(
                field,
                "required",
                "is required: retries with the same key apply once",
            ));
        }
        if raw.len() > 128 || !raw.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(violation(
                field,
                "REQUEST_ID_INVALID",
                "must be 1 to 128 printable ASCII characters",
            ));
        }
        Ok(RequestId(raw.to_owned()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A short free text: at most 256 characters, no control characters.
pub fn note(field: &str, raw: &str) -> Result<String, FieldViolation> {
    if raw.chars().count() > 256 || raw.chars().any(char::is_control) {
        return Err(violation(
            field,
            "NOTE_INVALID",
            "must be at most 256 printable characters",
        ));
    }
    Ok(raw.to_owned())
}

/// Units of one line: 1 to [`MAX_QUANTITY`].
pub fn quantity(field: &str, raw: i32) -> Result<i32, FieldViolation> {
    if !(1..=MAX_QUANTITY).contains(&raw) {
        return Err(violation(
            field,
            "QUANTITY_OUT_OF_RANGE",
            format!("must be between 1 and {MAX_QUANTITY}"),
        ));
    }
    Ok(raw)
}

/// Whether `raw` can be an id at the card gateway (a Stripe `pm_...`): 1 to
/// 255 ASCII letters, digits and underscores, as the orders table checks.
pub fn is_gateway_id(raw: &str) -> bool {
    (1..=255).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Why an order was cancelled, as stored and as clients see it.
pub mod reasons {
    /// The buyer (or an admin) cancelled it.
    pub const CANCELLED_ON_REQUEST: &str = "CANCELLED_ON_REQUEST";
    /// It stayed unpaid past the payment deadline.
    pub const PAYMENT_DEADLINE_PASSED: &str = "PAYMENT_DEADLINE_PASSED";
    /// The balance did not cover it.
    pub const INSUFFICIENT_FUNDS: &str = "INSUFFICIENT_FUNDS";
    /// The payment provider declined it.
    pub const PAYMENT_DECLINED: &str = "PAYMENT_DECLINED";

    /// The sentence OrderCancelled carries for `reason`.
    pub fn describe(reason: &str) -> &'static str {
        match reason {
            CANCELLED_ON_REQUEST => "cancelled on request",
            PAYMENT_DEADLINE_PASSED => "not paid before the payment deadline",
            INSUFFICIENT_FUNDS => "the balance did not cover the total",
            PAYMENT_DECLINED => "the payment was declined",
            _ => "cancelled",
        }
    }

    /// The reason itself when it says the payment failed: CreateOrder answers
    /// such an order with that error, to the first call and every retry.
    pub fn payment_failure(reason: &str) -> Option<&'static str> {
        [INSUFFICIENT_FUNDS, PAYMENT_DECLINED]
            .into_iter()
            .find(|known| *known == reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(amount_minor: i64, currency_code: &str) -> Option<Money> {
        Some(Money {
            amount_minor,
            currency_code: currency_code.into(),
        })
    }

    #[test]
    fn prices_are_positive_bounded_and_in_a_currency() {
        assert!(Price::parse("price", money(1, "USD").as_ref()).is_ok());
        assert!(Price::parse("price", money(0, "USD").as_ref()).is_err());
        assert!(Price::parse("price", money(MAX_PRICE_MINOR + 1, "USD").as_ref()).is_err());
        assert!(Price::parse("price", money(5, "usd").as_ref()).is_err());
        assert!(Price::parse("price", None).is_err());
    }

    #[test]
    fn names_keys_and_quantities_are_bounded() {
        assert_eq!(product_name("name", "  Tea ").ok().as_deref(), Some("Tea"));
        assert!(product_name("name", "   ").is_err());
        assert!(product_name("name", &"n".repeat(201)).is_err());
        assert!(product_name("name", "a\u{7}b").is_err());
        assert!(description("description", "two\nlines").is_ok());
        assert!(description("description", &"d".repeat(4001)).is_err());
        assert!(RequestId::parse("request_id", "").is_err());
        assert!(RequestId::parse("request_id", &"k".repeat(129)).is_err());
        assert!(RequestId::parse("request_id", "caf\u{e9}").is_err());
        assert!(quantity("quantity", 0).is_err());
        assert!(quantity("quantity", 1001).is_err());
        assert_eq!(quantity("quantity", 1000).ok(), Some(1000));
        assert!(stock("stock_quantity", -1).is_err());
        assert!(stock("stock_quantity", MAX_STOCK + 1).is_err());
        assert!(stock_delta("delta", 0).is_err());
        assert!(stock_delta("delta", i64::MIN).is_err());
        assert!(stock_delta("delta", i64::MAX).is_err());
        assert_eq!(stock_delta("delta", -MAX_STOCK).ok(), Some(-MAX_STOCK));
    }
}
