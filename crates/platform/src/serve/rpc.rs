//! What every gRPC handler shares: its reply type, and reading request fields
//! into values or INVALID_ARGUMENT errors that name every bad field.

use uuid::Uuid;

use crate::error::{Error, FieldViolation};

/// What a tonic handler returns.
pub type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

/// INVALID_ARGUMENT for one bad field.
pub fn invalid(violation: FieldViolation) -> Error {
    Error::invalid_fields(vec![violation])
}

/// Reads a UUID field, or says why it is not one.
pub fn uuid_field(field: &str, raw: &str) -> Result<Uuid, FieldViolation> {
    Uuid::parse_str(raw).map_err(|_| FieldViolation::new(field, "string.uuid", "must be a UUID"))
}

/// Reads a UUID field, or INVALID_ARGUMENT naming it.
pub fn parse_id(field: &str, raw: &str) -> Result<Uuid, Error> {
    uuid_field(field, raw).map_err(invalid)
}

/// The field violations found while reading a request, so the caller hears
/// of every bad field at once rather than one per attempt.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value, or `None` after noting why the field is invalid.
    pub fn check<T>(&mut self, field: Result<T, FieldViolation>) -> Option<T> {
        field.map_err(|violation| self.0.push(violation)).ok()
    }

    /// INVALID_ARGUMENT naming every violation noted.
    pub fn into_error(self) -> Error {
        Error::invalid_fields(self.0)
    }
}

/// Both values, or INVALID_ARGUMENT naming every bad field.
pub fn collect<A, B>(a: Result<A, FieldViolation>, b: Result<B, FieldViolation>) -> Result<(A, B), Error> {
    let mut violations = Violations::new();
    match (violations.check(a), violations.check(b)) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(violations.into_error()),
    }
}

/// The etag of a row at `version` (quoted, as HTTP writes entity tags).
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

/// Reads an etag [`etag`] handed out; empty means none given. `field` names
/// it in the error. An etag this service never handed out cannot be the
/// current one, so it is refused as a stale one is: ABORTED, read again.
pub fn parse_etag(field: &str, etag: &str) -> Result<Option<i64>, Error> {
    if etag.is_empty() {
        return Ok(None);
    }
    etag.trim_matches('"').parse().map(Some).map_err(|_| {
        Error::aborted(
            "ETAG_MISMATCH",
            format!("{field} is not the current etag; read the resource again and retry"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(field: &str) -> Result<(), FieldViolation> {
        Err(FieldViolation::new(field, "WRONG", "is wrong"))
    }

    fn fields(err: Error) -> Vec<String> {
        err.as_client()
            .map(|client| client.violations.iter().map(|v| v.field.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn collect_names_every_bad_field() {
        assert!(collect(Ok::<_, FieldViolation>(1), Ok::<_, FieldViolation>(2)).is_ok());
        let err = collect(bad("a"), bad("b")).err().map(fields);
        assert_eq!(err, Some(vec!["a".to_owned(), "b".to_owned()]));
        let err = collect(Ok::<_, FieldViolation>(1), bad("b")).err().map(fields);
        assert_eq!(err, Some(vec!["b".to_owned()]));
    }

    #[test]
    fn ids_must_be_uuids() {
        let id = Uuid::now_v7();
        assert_eq!(parse_id("id", &id.to_string()).ok(), Some(id));
        assert_eq!(
            parse_id("user_id", "nope").err().map(fields),
            Some(vec!["user_id".to_owned()])
        );
    }
}
