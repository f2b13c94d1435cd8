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

/// The `BadRequest` field violations of a refused call: (field, description).
pub fn violations(status: &Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that `result` is INVALID_ARGUMENT naming `field` with a
/// description that starts with the rule id `rule` (`string.min_len`).
pub fn assert_rule<T: std::fmt::Debug>(case: &str, result: Result<T, Status>, field: &str, rule: &str) {
    let status = match result {
        Ok(reply) => panic!("{case}: accepted: {reply:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{case}: {status:?}");
    let found = violations(&status);
    assert!(
        found.iter().any(|(f, d)| f == field && d.starts_with(rule)),
        "{case}: no {field} {rule} among {found:?}"
    );
}
