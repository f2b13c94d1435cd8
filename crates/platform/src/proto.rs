//! Conversions between domain values and their protobuf forms.

use chrono::{DateTime, Utc};

/// A `google.protobuf.Timestamp` for `at`.
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A `keel.common.v1.Money` of `amount_minor` in `currency` (ISO 4217).
pub fn money(amount_minor: i64, currency: &str) -> keel::common::v1::Money {
    keel::common::v1::Money {
        amount_minor,
        currency_code: currency.to_owned(),
    }
}
