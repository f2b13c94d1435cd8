//! The browser's side of "Sign in with a provider": the three routes that
//! are redirects and cookies rather than JSON, in front of auth's
//! StartProviderSignIn and FinishProviderSignIn.
//!
//! - `GET /v1/auth/providers/{provider}:start?return_url=…&code_challenge=…`
//!   sends the browser to the provider (302) and sets the sign-in's browser
//!   binding as a cookie.
//! - `POST /v1/auth/providers/{provider}:link` (signed in; JSON
//!   `{"returnUrl", "codeChallenge", "password"}`) answers
//!   `{"authorizationUrl"}` and sets the same cookie, to link the provider
//!   to the caller's account.
//! - `GET /v1/auth/providers/{provider}/callback` receives the provider's
//!   answer and sends the browser to the application's return URL with a
//!   one-time `code` (never a token in a URL), or with `error` and
//!   `error_description`. The application exchanges the code at
//!   `POST /v1/auth:exchangeSignInCode` with its PKCE verifier.
//!
//! The cookie is `HttpOnly`, `SameSite=Lax` (the provider's redirect back
//! is a top-level GET, which Lax lets through), `Secure` unless the gateway
//! is reached on loopback, and scoped to `/v1/auth/providers/{provider}/`.

use std::net::IpAddr;

use axum::{body::Body, response::Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts};
use keel::auth::v1::{self as pb, auth_service_client::AuthServiceClient};
use serde::Deserialize;
use tonic::{
    Code,
    metadata::{MetadataMap, MetadataValue},
};
use url::Url;

use crate::{Gateway, error::ApiError};

/// The cookie holding a sign-in's browser binding.
pub const COOKIE: &str = "keel_sign_in";
/// How long the cookie lives: as long as a sign-in may take.
const COOKIE_MAX_AGE_SECS: u32 = 600;
/// The paths' common prefix.
const PREFIX: &str = "/v1/auth/providers/";

/// A provider sign-in route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `GET …/{provider}:start`
    Start(String),
    /// `POST …/{provider}:link`
    Link(String),
    /// `GET …/{provider}/callback`
    Callback(String),
}

impl Step {
    /// The route `method` and `path` name, if they name one.
    pub fn of(method: &Method, path: &str) -> Option<Self> {
        let rest = path.strip_prefix(PREFIX)?;
        let valid = |id: &str| {
            !id.is_empty()
                && id.len() <= 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if let Some(id) = rest.strip_suffix(":start") {
            return (valid(id) && method == Method::GET).then(|| Step::Start(id.to_owned()));
        }
        if let Some(id) = rest.strip_suffix(":link") {
            return (valid(id) && method == Method::POST).then(|| Step::Link(id.to_owned()));
        }
        if let Some(id) = rest.strip_suffix("/callback") {
            return (valid(id) && method == Method::GET).then(|| Step::Callback(id.to_owned()));
        }
        None
    }

    /// Whether the route needs the caller's token.
    pub fn needs_token(&self) -> bool {
        matches!(self, Step::Link(_))
    }
}

#[derive(Deserialize, Default)]
struct StartQuery {
    return_url: Option<String>,
    code_challenge: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LinkBody {
    return_url: String,
    code_challenge: String,
    #[serde(default)]
    password: String,
}

#[derive(Deserialize, Default)]
struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    iss: Option<String>,
}

/// Serves `step`. `metadata` carries the client's address (and, for
/// linking, the caller's token) to auth.
pub async fn serve(
    gateway: &Gateway,
    step: Step,
    parts: &Parts,
    body: bytes::Bytes,
    metadata: MetadataMap,
) -> Result<Response, ApiError> {
    let channel = gateway
        .upstreams
        .channel("auth")
        .ok_or_else(|| ApiError::new(Code::Unavailable, "no auth service is configured"))?;
    let mut auth = AuthServiceClient::new(channel);
    let secure = !is_loopback(&parts.headers);
    let query = parts.uri.query().unwrap_or_default();
    let timeout = gateway.upstream_timeout;
    match step {
        Step::Start(provider) => {
            let query: StartQuery = serde_urlencoded_query(query)?;
            let started = auth
                .start_provider_sign_in(request(
                    pb::StartProviderSignInRequest {
                        provider: provider.clone(),
                        return_url: query.return_url.unwrap_or_default(),
                        code_challenge: query.code_challenge.unwrap_or_default(),
                        link: false,
                        password: String::new(),
                    },
                    &metadata,
                    timeout,
                ))
                .await?
                .into_inner();
            let location = HeaderValue::try_from(started.authorization_url)
                .map_err(|_| ApiError::new(Code::Internal, "the authorization URL is not a header value"))?;
            let mut response = redirect(location);
            set_cookie(&mut response, &provider, &started.browser_binding, secure);
            Ok(response)
        }
        Step::Link(provider) => {
            let body: LinkBody = serde_json::from_slice(&body).map_err(|err| {
                ApiError::bad_request(format!(
                    "the body must be {{\"returnUrl\", \"codeChallenge\", \"password\"}}: {err}"
                ))
            })?;
            let started = auth
                .start_provider_sign_in(request(
                    pb::StartProviderSignInRequest {
                        provider: provider.clone(),
                        return_url: body.return_url,
                        code_challenge: body.code_challenge,
                        link: true,
                        password: body.password,
                    },
                    &metadata,
                    timeout,
                ))
                .await?
                .into_inner();
            let json = serde_json::json!({ "authorizationUrl": started.authorization_url });
            let mut response = Response::new(Body::from(json.to_string()));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            set_cookie(&mut response, &provider, &started.browser_binding, secure);
            Ok(response)
        }
        Step::Callback(provider) => {
            let query: CallbackQuery = serde_urlencoded_query(query)?;
            let binding = cookie(&parts.headers, COOKIE).unwrap_or_default();
            let finished = auth
                .finish_provider_sign_in(request(
                    pb::FinishProviderSignInRequest {
                        provider: provider.clone(),
                        state: query.state.unwrap_or_default(),
                        code: query.code.unwrap_or_default(),
                        error: query.error.unwrap_or_default(),
                        iss: query.iss.unwrap_or_default(),
                        browser_binding: binding,
                    },
                    &metadata,
                    timeout,
                ))
                .await;
            let finished = match finished {
                Ok(finished) => finished.into_inner(),
                Err(status) => {
                    let mut error = ApiError::from(status);
                    if let Some(value) = clear_cookie(&provider, secure) {
                        error = error.with_header(header::SET_COOKIE, value);
                    }
                    return Err(error);
                }
            };
            let mut url = Url::parse(&finished.return_url)
                .map_err(|_| ApiError::new(Code::Internal, "the return URL is not a URL"))?;
            if finished.error.is_empty() {
                url.query_pairs_mut().append_pair("code", &finished.sign_in_code);
            } else {
                url.query_pairs_mut()
                    .append_pair("error", &finished.error)
                    .append_pair("error_description", &finished.error_description);
            }
            let location = HeaderValue::try_from(url.as_str())
                .map_err(|_| ApiError::new(Code::Internal, "the return URL is not a header value"))?;
            let mut response = redirect(location);
            if let Some(value) = clear_cookie(&provider, secure) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            Ok(response)
        }
    }
}

/// The metadata auth gets: the client's address, and the caller's token
/// when the step needs one.
pub fn metadata(headers: &HeaderMap, client: IpAddr, with_token: bool) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    if let Ok(value) = MetadataValue::try_from(client.to_string()) {
        metadata.insert(keel_platform::serve::client_address::FORWARDED_FOR, value);
    }
    for name in ["user-agent", "x-request-id"]
        .into_iter()
        .chain(with_token.then_some("authorization"))
    {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok())
            && let Ok(value) = MetadataValue::try_from(value)
        {
            metadata.insert(name, value);
        }
    }
    metadata
}

fn request<T>(message: T, metadata: &MetadataMap, timeout: std::time::Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    *request.metadata_mut() = metadata.clone();
    request.set_timeout(timeout);
    request
}

fn serde_urlencoded_query<T: for<'de> Deserialize<'de> + Default>(query: &str) -> Result<T, ApiError> {
    let pairs: serde_json::Map<String, serde_json::Value> = url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
        .collect();
    serde_json::from_value(serde_json::Value::Object(pairs))
        .map_err(|err| ApiError::bad_request(format!("the query is not understood: {err}")))
}

fn redirect(location: HeaderValue) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::FOUND;
    response.headers_mut().insert(header::LOCATION, location);
    response
}

fn cookie_attributes(provider: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("Path={PREFIX}{provider}/; HttpOnly; SameSite=Lax{secure}")
}

fn set_cookie(response: &mut Response, provider: &str, binding: &str, secure: bool) {
    let value = format!(
        "{COOKIE}={binding}; Max-Age={COOKIE_MAX_AGE_SECS}; {}",
        cookie_attributes(provider, secure)
    );
    if let Ok(value) = HeaderValue::try_from(value) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

fn clear_cookie(provider: &str, secure: bool) -> Option<HeaderValue> {
    HeaderValue::try_from(format!("{COOKIE}=; Max-Age=0; {}", cookie_attributes(provider, secure))).ok()
}

/// The value of cookie `name`, if the request has it.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// Whether the browser reached the gateway on loopback (then the cookie
/// cannot be `Secure`: there is no TLS).
fn is_loopback(headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_recognised_by_method_and_shape() {
        assert_eq!(
            Step::of(&Method::GET, "/v1/auth/providers/corp:start"),
            Some(Step::Start("corp".into()))
        );
        assert_eq!(
            Step::of(&Method::GET, "/v1/auth/providers/corp/callback"),
            Some(Step::Callback("corp".into()))
        );
        assert_eq!(
            Step::of(&Method::POST, "/v1/auth/providers/corp:link"),
            Some(Step::Link("corp".into()))
        );
        assert_eq!(Step::of(&Method::POST, "/v1/auth/providers/corp:start"), None);
        assert_eq!(Step::of(&Method::GET, "/v1/auth/providers"), None);
        assert_eq!(Step::of(&Method::GET, "/v1/auth/providers/Bad_Id:start"), None);
    }

    #[test]
    fn cookies_are_read_and_loopback_is_told_apart() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; keel_sign_in=xyz; b=2"));
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert_eq!(cookie(&headers, COOKIE).as_deref(), Some("xyz"));
        assert!(is_loopback(&headers));
        headers.insert(header::HOST, HeaderValue::from_static("api.example.com"));
        assert!(!is_loopback(&headers));
        headers.insert(header::HOST, HeaderValue::from_static("[::1]:8080"));
        assert!(is_loopback(&headers));
    }
}
