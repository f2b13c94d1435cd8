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

/// One `BadRequest` field violation of a refused call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field's path.
    pub field: String,
    /// The rule id or the service's reason.
    pub reason: String,
    /// The sentence for people.
    pub description: String,
}

/// The `BadRequest` field violations of a refused call, in order.
pub fn violations(status: &Status) -> Vec<Violation> {
    status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations
                .into_iter()
                .map(|v| Violation {
                    field: v.field,
                    reason: v.reason,
                    description: v.description,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that `result` is INVALID_ARGUMENT naming `field` with the rule id
/// `rule` (`string.min_len`) as its reason, told in words: the description
/// is a sentence, not the rule id or a pattern.
pub fn assert_rule<T: std::fmt::Debug>(case: &str, result: Result<T, Status>, field: &str, rule: &str) {
    let status = match result {
        Ok(reply) => panic!("{case}: accepted: {reply:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{case}: {status:?}");
    let found = violations(&status);
    let violation = found
        .iter()
        .find(|v| v.field == field && v.reason == rule)
        .unwrap_or_else(|| panic!("{case}: no {field} {rule} among {found:?}"));
    let words = &violation.description;
    assert!(
        !words.is_empty() && !words.starts_with(&format!("{rule}:")) && !words.contains(['^', '$', '\\', '[']),
        "{case}: {words:?} is not a sentence for people"
    );
    assert!(
        status.message().contains(&format!("{field}: {words}")),
        "{case}: the message {:?} does not say {words:?}",
        status.message()
    );
}
