//! Errors as HTTP responses: the gRPC code picks the status, and the body is
//! the proto3 JSON form of `google.rpc.Status`, details included.

use std::time::Duration;

use axum::{
    body::Body,
    response::{IntoResponse as _, Response},
};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use prost_reflect::{DynamicMessage, SerializeOptions, Value};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::{descriptors::Descriptors, status::http_status};

/// A request that ends in an error: a gRPC status from a service, or one the
/// gateway raised itself (with an HTTP status that has no gRPC code, such as
/// 405, 413 or 415, where one applies).
#[derive(Debug)]
pub struct ApiError {
    status: Status,
    http: Option<StatusCode>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with a gRPC code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self::from(Status::new(code, message.into()))
    }

    /// INVALID_ARGUMENT with one field violation.
    pub fn bad_field(field: &str, description: impl Into<String>) -> Self {
        let description = description.into();
        let details = ErrorDetails::with_bad_request_violation(field, description.clone());
        Self::from(Status::with_error_details(
            Code::InvalidArgument,
            format!("{field}: {description}"),
            details,
        ))
    }

    /// INVALID_ARGUMENT about the request as a whole (malformed JSON, say).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// A token that did not verify: the verifier's status (its ErrorInfo
    /// reason kept) with RFC 6750's `invalid_token` challenge. Other 401s get
    /// the bare challenge when they become a response.
    pub fn invalid_token(status: Status) -> Self {
        let description = status.message().replace(['"', '\\'], "'");
        let challenge = format!(r#"Bearer realm="keel", error="invalid_token", error_description="{description}""#);
        let mut error = Self::from(status);
        if let Ok(value) = HeaderValue::try_from(challenge) {
            error.headers.push((header::WWW_AUTHENTICATE, value));
        }
        error
    }

    /// RESOURCE_EXHAUSTED with a RetryInfo: the client's rate limit.
    pub fn rate_limited(wait: Duration) -> Self {
        Self::from(Status::with_error_details(
            Code::ResourceExhausted,
            "too many requests from this client; retry later",
            ErrorDetails::with_retry_info(Some(wait)),
        ))
    }

    /// Answers with `status` instead of the code's usual one.
    pub fn with_http_status(mut self, status: StatusCode) -> Self {
        self.http = Some(status);
        self
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        self.status.code()
    }

    /// The HTTP response: status, `Retry-After` when the error carries a
    /// RetryInfo, and the `google.rpc.Status` JSON body.
    pub fn into_response(self, descriptors: &Descriptors) -> Response {
        let status = self.http.unwrap_or_else(|| {
            StatusCode::from_u16(http_status(self.status.code())).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        });
        let mut response = (status, json_body(descriptors, &self.status)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(delay) = self.status.get_details_retry_info().and_then(|info| info.retry_delay) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(delay)));
        }
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        // RFC 9110: every 401 carries a challenge.
        if status == StatusCode::UNAUTHORIZED && !headers.contains_key(header::WWW_AUTHENTICATE) {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="keel""#),
            );
        }
        response
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        ApiError {
            status,
            http: None,
            headers: Vec::new(),
        }
    }
}

/// Whole seconds, rounded up, and at least one: `Retry-After: 0` would invite
/// an immediate retry that fails again.
fn retry_after_secs(delay: Duration) -> u64 {
    let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    secs.max(1)
}

/// The proto3 JSON of `google.rpc.Status` for `status`. Details the
/// descriptors do not know are left out rather than failing the response.
pub fn json_body(descriptors: &Descriptors, status: &Status) -> Body {
    Body::from(status_json(descriptors, status))
}

/// [`json_body`] as bytes (for Server-Sent Events).
pub fn status_json(descriptors: &Descriptors, status: &Status) -> Bytes {
    let mut message = DynamicMessage::decode(descriptors.status().clone(), status.details())
        .unwrap_or_else(|_| DynamicMessage::new(descriptors.status().clone()));
    message.set_field_by_name("code", Value::I32(status.code() as i32));
    message.set_field_by_name("message", Value::String(status.message().to_owned()));
    let options = SerializeOptions::new().skip_default_fields(false);
    let mut body = Vec::new();
    if message
        .serialize_with_options(&mut serde_json::Serializer::new(&mut body), &options)
        .is_err()
    {
        // A detail of an unknown type: send code and message alone.
        message.clear_field_by_name("details");
        body.clear();
        if let Err(err) = message.serialize_with_options(&mut serde_json::Serializer::new(&mut body), &options) {
            tracing::error!(error = %err, "could not render an error body");
            body = br#"{"code":13,"message":"internal error","details":[]}"#.to_vec();
        }
    }
    Bytes::from(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(error: ApiError) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let descriptors = Descriptors::load().expect("descriptors");
        let response = error.into_response(&descriptors);
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = futures::executor::block_on(http_body_util::BodyExt::collect(response.into_body()))
            .expect("body")
            .to_bytes();
        (status, headers, serde_json::from_slice(&bytes).expect("JSON"))
    }

    #[test]
    fn details_render_as_proto3_json_with_type_urls() {
        let (status, _, body) = body_of(ApiError::bad_field("email", "must contain @"));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], 3);
        assert_eq!(body["message"], "email: must contain @");
        assert_eq!(body["details"][0]["@type"], "type.googleapis.com/google.rpc.BadRequest");
        assert_eq!(body["details"][0]["fieldViolations"][0]["field"], "email");
    }

    #[test]
    fn retry_info_becomes_retry_after_rounded_up() {
        let (status, headers, body) = body_of(ApiError::rate_limited(Duration::from_millis(1500)));
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[header::RETRY_AFTER], "2");
        assert_eq!(body["details"][0]["retryDelay"], "1.500s");
    }

    #[test]
    fn a_missing_token_gets_a_bare_challenge_and_a_bad_one_says_why() {
        let (status, headers, _) = body_of(ApiError::new(Code::Unauthenticated, "missing bearer token"));
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[header::WWW_AUTHENTICATE], r#"Bearer realm="keel""#);
        let expired = Status::with_error_details(
            Code::Unauthenticated,
            "the token has expired",
            ErrorDetails::with_error_info("TOKEN_EXPIRED", "keel.dev", []),
        );
        let (_, headers, body) = body_of(ApiError::invalid_token(expired));
        assert_eq!(
            headers[header::WWW_AUTHENTICATE],
            r#"Bearer realm="keel", error="invalid_token", error_description="the token has expired""#
        );
        assert_eq!(body["details"][0]["reason"], "TOKEN_EXPIRED", "the reason is kept");
    }

    #[test]
    fn gateway_statuses_override_the_code_mapping() {
        let (status, _, body) = body_of(
            ApiError::bad_request("bodies must be application/json")
                .with_http_status(StatusCode::UNSUPPORTED_MEDIA_TYPE),
        );
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(body["code"], 3);
    }
}
