//! The one error type services return, and its mapping to a rich `tonic::Status`.
//!
//! Client errors carry a stable `ErrorInfo.reason` (AIP-193) and, for bad
//! input, `BadRequest` field violations. Internal errors are logged with their
//! full context and reach the caller only as a generic message: nothing secret
//! or internal ever leaves in a `Status`.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Keel error.
pub const ERROR_DOMAIN: &str = "keel.dev";

/// A result whose error maps to a `tonic::Status`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error a service returns: either the caller's fault (with a reason the
/// caller can branch on) or an internal failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's fault, or a state the caller must see.
    #[error("{0}")]
    Client(Box<ClientError>),
    /// A failure the caller can do nothing about; its detail stays in the logs.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// An error meant for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// The gRPC status code.
    pub code: Code,
    /// The stable machine-readable reason, UPPER_SNAKE_CASE.
    pub reason: &'static str,
    /// A sentence for people.
    pub message: String,
    /// `BadRequest` field violations.
    pub violations: Vec<FieldViolation>,
    /// How long to wait before retrying, for RESOURCE_EXHAUSTED.
    pub retry_after: Option<Duration>,
    /// `ErrorInfo.metadata`: what the caller needs to act on the error (the
    /// id of the missing product, the state that refused the change).
    pub metadata: BTreeMap<String, String>,
}

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path in the request, e.g. `password`.
    pub field: String,
    /// What a client branches on, never empty: the id of the published rule
    /// the value breaks (`string.min_len`, as protovalidate names rules), or
    /// an UPPER_SNAKE reason for a check only the service makes.
    pub reason: Cow<'static, str>,
    /// What is wrong with it, for people: "must be at least 8 characters".
    pub description: String,
    /// The pattern a `string.pattern` violation breaks, for clients that want
    /// it: it goes to `ErrorInfo.metadata` as `<field>.pattern`, never into
    /// the description.
    pub pattern: Option<String>,
}

impl FieldViolation {
    /// `field` breaks the rule or check `reason`, as `description` says.
    pub fn new(field: impl Into<String>, reason: impl Into<Cow<'static, str>>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
            description: description.into(),
            pattern: None,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}: {}", self.code, self.reason, self.message)
    }
}

impl Error {
    /// A client error with any code and reason.
    pub fn client(code: Code, reason: &'static str, message: impl Into<String>) -> Self {
        Error::Client(Self::client_error(code, reason, message))
    }

    fn client_error(code: Code, reason: &'static str, message: impl Into<String>) -> Box<ClientError> {
        Box::new(ClientError {
            code,
            reason,
            message: message.into(),
            violations: Vec::new(),
            retry_after: None,
            metadata: BTreeMap::new(),
        })
    }

    /// Adds `key = value` to the `ErrorInfo` metadata of a client error (an
    /// internal error carries none: its detail stays in the logs).
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        if let Error::Client(client) = &mut self {
            client.metadata.insert(key.into(), value.into());
        }
        self
    }

    /// INVALID_ARGUMENT with one field violation (see [`FieldViolation::new`]).
    pub fn invalid_field(
        field: impl Into<String>,
        reason: impl Into<Cow<'static, str>>,
        description: impl Into<String>,
    ) -> Self {
        Self::invalid_fields(vec![FieldViolation::new(field, reason, description)])
    }

    /// INVALID_ARGUMENT with every field violation found. The message joins
    /// their descriptions (`email: must be a valid email address`); the
    /// patterns broken go to the metadata.
    pub fn invalid_fields(violations: Vec<FieldViolation>) -> Self {
        let message = violations
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; ");
        let metadata = violations
            .iter()
            .filter_map(|v| Some((format!("{}.pattern", v.field), v.pattern.clone()?)))
            .collect();
        Error::Client(Box::new(ClientError {
            violations,
            metadata,
            ..*Self::client_error(Code::InvalidArgument, "INVALID_ARGUMENT", message)
        }))
    }

    /// INVALID_ARGUMENT with a specific reason and no field.
    pub fn invalid_argument(reason: &'static str, message: impl Into<String>) -> Self {
        Self::client(Code::InvalidArgument, reason, message)
    }

    /// UNAUTHENTICATED: no credentials, or credentials that do not verify.
    pub fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Self {
        Self::client(Code::Unauthenticated, reason, message)
    }

    /// PERMISSION_DENIED: the caller is known but may not do this.
    pub fn permission_denied(reason: &'static str, message: impl Into<String>) -> Self {
        Self::client(Code::PermissionDenied, reason, message)
    }

    /// NOT_FOUND for a resource of the given kind.
    pub fn not_found(resource: &str) -> Self {
        Self::client(Code::NotFound, "NOT_FOUND", format!("{resource} not found"))
    }

    /// ALREADY_EXISTS.
    pub fn already_exists(reason: &'static str, message: impl Into<String>) -> Self {
        Self::client(Code::AlreadyExists, reason, message)
    }

    /// FAILED_PRECONDITION: the system is not in a state that allows this.
    pub fn failed_precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Self::client(Code::FailedPrecondition, reason, message)
    }

    /// ABORTED: a concurrency conflict, such as a stale etag.
    pub fn aborted(reason: &'static str, message: impl Into<String>) -> Self {
        Self::client(Code::Aborted, reason, message)
    }

    /// RESOURCE_EXHAUSTED with a `RetryInfo` delay.
    pub fn too_many(reason: &'static str, message: impl Into<String>, retry_after: Duration) -> Self {
        Error::Client(Box::new(ClientError {
            retry_after: Some(retry_after),
            ..*Self::client_error(Code::ResourceExhausted, reason, message)
        }))
    }

    /// UNAVAILABLE: a dependency is down; the caller may retry.
    pub fn unavailable(reason: &'static str, message: impl Into<String>) -> Self {
        Self::client(Code::Unavailable, reason, message)
    }

    /// The client error, if this is one.
    pub fn as_client(&self) -> Option<&ClientError> {
        match self {
            Error::Client(client) => Some(client),
            Error::Internal(_) => None,
        }
    }
}

impl From<diesel::result::Error> for Error {
    /// A connection that broke under the query (Postgres restarting, the
    /// network dropping) is UNAVAILABLE, so a standard retrying client tries
    /// again (idempotency keys make that safe); any other failure is internal.
    fn from(err: diesel::result::Error) -> Self {
        if connection_lost(&err) {
            tracing::warn!(error = %err, "the database connection was lost mid-query");
            return Self::unavailable("DATABASE_UNAVAILABLE", "the database is unavailable; retry later");
        }
        Error::Internal(anyhow::Error::new(err).context("database query failed"))
    }
}

/// Whether `err` says the connection went away rather than the query failed.
fn connection_lost(err: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error as Diesel};
    // What Postgres says as it ends a session from its side (SQLSTATE class
    // 57P and server start-up); diesel passes on the message, not the code.
    const SERVER_GOING_AWAY: &[&str] = &[
        "terminating connection",
        "the database system is shutting down",
        "the database system is starting up",
        "the database system is in recovery mode",
        "the database system is not yet accepting connections",
    ];
    match err {
        Diesel::BrokenTransactionManager => true,
        Diesel::DatabaseError(DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand, _) => true,
        Diesel::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            SERVER_GOING_AWAY.iter().any(|m| info.message().starts_with(m))
        }
        _ => false,
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for Error {
    fn from(err: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        tracing::warn!(error = %err, "no database connection available");
        Self::unavailable("DATABASE_UNAVAILABLE", "the database is unavailable; retry later")
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::Client(client) => {
                let mut details = ErrorDetails::new();
                details.set_error_info(
                    client.reason,
                    ERROR_DOMAIN,
                    client.metadata.clone().into_iter().collect::<HashMap<_, _>>(),
                );
                if !client.violations.is_empty() {
                    let violations: Vec<tonic_types::FieldViolation> = client
                        .violations
                        .iter()
                        .map(|v| tonic_types::FieldViolation {
                            field: v.field.clone(),
                            description: v.description.clone(),
                            reason: v.reason.clone().into_owned(),
                            localized_message: None,
                        })
                        .collect();
                    details.set_bad_request(violations);
                }
                if let Some(delay) = client.retry_after {
                    details.set_retry_info(Some(delay));
                }
                Status::with_error_details(client.code, client.message, details)
            }
            Error::Internal(err) => {
                tracing::error!(error = format!("{err:#}"), "internal error");
                Status::with_error_details(
                    Code::Internal,
                    "internal error",
                    ErrorDetails::with_error_info("INTERNAL", ERROR_DOMAIN, HashMap::<String, String>::new()),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_violations_become_bad_request_details() {
        let status = Status::from(Error::invalid_field("email", "EMAIL_INVALID", "must contain @"));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_details_bad_request().expect("bad request details");
        assert_eq!(details.field_violations[0].field, "email");
        assert_eq!(details.field_violations[0].reason, "EMAIL_INVALID");
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(info.reason, "INVALID_ARGUMENT");
        assert_eq!(info.domain, ERROR_DOMAIN);
    }

    #[test]
    fn any_reason_carries_its_metadata() {
        let status = Status::from(
            Error::client(Code::NotFound, "PRODUCT_NOT_FOUND", "product not found").with_metadata("product_id", "p-1"),
        );
        assert_eq!(status.code(), Code::NotFound);
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(info.reason, "PRODUCT_NOT_FOUND");
        assert_eq!(info.metadata.get("product_id").map(String::as_str), Some("p-1"));
    }

    #[test]
    fn a_lost_connection_is_unavailable() {
        let closed = diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UnableToSendCommand,
            Box::new("connection closed".to_owned()),
        );
        assert_eq!(Status::from(Error::from(closed)).code(), Code::Unavailable);
        let other = diesel::result::Error::NotFound;
        assert_eq!(Status::from(Error::from(other)).code(), Code::Internal);
    }

    #[test]
    fn internal_errors_hide_their_detail() {
        let status = Status::from(Error::Internal(anyhow::anyhow!("secret connection string")));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }

    #[test]
    fn too_many_carries_retry_info() {
        let status = Status::from(Error::too_many(
            "TOO_MANY_ATTEMPTS",
            "slow down",
            Duration::from_secs(90),
        ));
        assert_eq!(status.code(), Code::ResourceExhausted);
        let retry = status.get_details_retry_info().expect("retry info");
        assert_eq!(retry.retry_delay, Some(Duration::from_secs(90)));
    }
}
