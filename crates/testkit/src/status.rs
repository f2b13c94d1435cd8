//! Reading the rich details of a refused call.

use tonic::Status;
use tonic_types::StatusExt as _;

/// The `ErrorInfo.reason` of a refused call (empty when it has none).
pub fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

/// The fields a `BadRequest` detail names, in order.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// A value of the `ErrorInfo` metadata of a refused call.
pub fn metadata(status: &Status, key: &str) -> Option<String> {
    status
        .get_details_error_info()
        .and_then(|info| info.metadata.get(key).cloned())
}
