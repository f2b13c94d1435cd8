//! Conversions between domain values and their protobuf forms.

use chrono::{DateTime, Utc};

/// A `google.protobuf.Timestamp` for `at`.
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}
