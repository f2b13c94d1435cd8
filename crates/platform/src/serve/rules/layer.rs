//! The tower layer that checks every unary request against its message's
//! rules before the service sees it.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Buf as _, Bytes};
use http_body_util::BodyExt as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};

use super::set::Rules;
use crate::error::{Error, FieldViolation};

/// Checks every unary request against its message's rules before the
/// service sees it: a broken rule is INVALID_ARGUMENT with a `BadRequest`
/// field violation per rule, and the handler is not called.
#[derive(Debug, Clone)]
pub struct ValidateLayer {
    rules: Arc<Rules>,
}

impl ValidateLayer {
    /// A layer enforcing `rules`.
    pub fn new(rules: Arc<Rules>) -> Self {
        Self { rules }
    }
}

impl<S> tower::Layer<S> for ValidateLayer {
    type Service = Validate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Validate {
            inner,
            rules: self.rules.clone(),
        }
    }
}

/// The service [`ValidateLayer`] builds.
#[derive(Debug, Clone)]
pub struct Validate<S> {
    inner: S,
    rules: Arc<Rules>,
}

/// The largest request the check reads whole (tonic's own default limit).
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

impl<S> tower::Service<http::Request<tonic::body::Body>> for Validate<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // The clone is not ready; swap so the ready service handles this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(descriptor) = self.rules.request_type(request.uri().path()).cloned() else {
            return Box::pin(inner.call(request));
        };
        let rules = self.rules.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = match http_body_util::Limited::new(body, MAX_REQUEST_BYTES).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    let status = tonic::Status::resource_exhausted("the request is too large or was cut off");
                    return Ok(status.into_http());
                }
            };
            if let Some(violations) = check_frame(&rules, &descriptor, &bytes)
                && !violations.is_empty()
            {
                return Ok(tonic::Status::from(Error::invalid_fields(violations)).into_http());
            }
            let request = http::Request::from_parts(parts, tonic::body::Body::new(http_body_util::Full::new(bytes)));
            inner.call(request).await
        })
    }
}

/// The violations of the single uncompressed gRPC message in `frame`, or
/// None when it is not one (compressed, several messages, undecodable): the
/// service then reads it and answers as it always does.
fn check_frame(rules: &Rules, descriptor: &MessageDescriptor, frame: &Bytes) -> Option<Vec<FieldViolation>> {
    let mut buf = frame.clone();
    if buf.remaining() < 5 {
        return None;
    }
    let compressed = buf.get_u8();
    let len = buf.get_u32() as usize;
    if compressed != 0 || buf.remaining() != len {
        return None;
    }
    let message = DynamicMessage::decode(descriptor.clone(), buf).ok()?;
    Some(rules.violations(&message))
}
