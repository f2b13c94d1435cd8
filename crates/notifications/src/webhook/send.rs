//! One webhook attempt: a signed POST to the endpoint, its answer read as an
//! [`Outcome`].

use std::{
    error::Error as _,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use reqwest::{
    StatusCode,
    header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER},
    redirect,
};
use url::Url;

use super::{
    secret::SigningSecret,
    sign::signature_header,
    ssrf::{Guard, GuardedResolver, Refusal},
};
use crate::{config::WebhookConfig, domain::Outcome};

/// The header carrying the delivery's id, the receiver's idempotency key.
pub const WEBHOOK_ID: &str = "webhook-id";
/// The header carrying the attempt's time (unix seconds).
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// The header carrying the signatures.
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// The `User-Agent` of every delivery.
pub const USER_AGENT: &str = concat!("Keel-Webhooks/", env!("CARGO_PKG_VERSION"));

/// Connecting gets at most this long (less when the whole delivery has
/// less), so an unreachable host fails fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends webhook deliveries over one pooled HTTP client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    guard: Guard,
    timeout: Duration,
}

impl Sender {
    /// A sender with the settings' timeout and SSRF policy.
    pub fn new(config: &WebhookConfig) -> anyhow::Result<Self> {
        let guard = Guard {
            allow_private: config.webhook_allow_private,
        };
        let timeout = config.timeout();
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(timeout)
            .connect_timeout(timeout.min(CONNECT_TIMEOUT))
            // A redirect could lead anywhere, past the guard; Standard
            // Webhooks counts a 3xx as a failure anyway.
            .redirect(redirect::Policy::none())
            // A proxy would resolve names itself, out of the guard's sight.
            .no_proxy()
            // Connect only to addresses the guard resolved and passed.
            .dns_resolver(GuardedResolver::new(guard))
            .build()
            .context("building the webhook HTTP client")?;
        Ok(Self { client, guard, timeout })
    }

    /// Checks an endpoint URL at registration: its form, and every address
    /// its host resolves to now (a name with no address passes).
    pub async fn check_endpoint(&self, raw_url: &str) -> Result<Url, Refusal> {
        let url = self.guard.check_url(raw_url)?;
        match self.guard.resolve(&url).await {
            // A name with no address yet may get one (a receiver being set
            // up); each delivery resolves and checks it again.
            Ok(_) | Err(Refusal::Unresolved { .. }) => Ok(url),
            Err(refusal) => Err(refusal),
        }
    }

    /// POSTs `body` to `url`, signed with each of `secrets`, with `msg_id`
    /// as `webhook-id` (the same on every retry) and now as
    /// `webhook-timestamp`, all within the timeout: one attempt never holds
    /// its worker longer. Errors in the outcome never hold a secret or the
    /// body.
    pub async fn send(&self, url: &str, msg_id: &str, body: &[u8], secrets: &[&SigningSecret]) -> Outcome {
        // The URL is checked again at each delivery: the rules may have
        // changed since the endpoint was registered.
        let url = match self.guard.check_url(url) {
            Ok(url) => url,
            Err(refusal) => return refused(refusal.to_string()),
        };
        if secrets.is_empty() {
            return refused("no signing secret to sign with".into());
        }
        let headers = match headers(msg_id, body, secrets) {
            Ok(headers) => headers,
            Err(error) => return refused(error),
        };
        let request = async {
            match self.client.post(url).headers(headers).body(body.to_vec()).send().await {
                Ok(response) => {
                    let outcome = outcome(response.status(), response.headers());
                    drain(response).await;
                    outcome
                }
                Err(err) => self.failed(&err),
            }
        };
        // The client's own timeout covers the request; this one covers
        // everything around it too (resolving, reading the answer), so that
        // no receiver can hold a worker past it.
        tokio::time::timeout(self.timeout, request)
            .await
            .unwrap_or_else(|_| retry(format!("timed out after {} ms", self.timeout.as_millis())))
    }

    /// What a request that got no answer comes to.
    fn failed(&self, err: &reqwest::Error) -> Outcome {
        let mut source = err.source();
        while let Some(cause) = source {
            match cause.downcast_ref::<Refusal>() {
                // The guarded resolver refused the name's addresses at this
                // connection (DNS changed since the endpoint was checked).
                Some(refusal @ Refusal::Forbidden { .. }) => return refused(refusal.to_string()),
                // A name that does not resolve now may again later.
                Some(refusal) => return retry(refusal.to_string()),
                None => source = cause.source(),
            }
        }
        retry(if err.is_timeout() {
            format!("timed out after {} ms", self.timeout.as_millis())
        } else if err.is_connect() {
            format!("could not connect: {}", root_cause(err))
        } else {
            format!("the request failed: {}", root_cause(err))
        })
    }
}

/// Reads and drops a short answer's body, so its connection goes back to
/// the pool; a long one is cut short (the connection is closed instead).
/// The client's timeout bounds the reading.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read > DRAIN_LIMIT {
            break;
        }
    }
}

/// The most of an answer's body read only to keep its connection.
const DRAIN_LIMIT: usize = 64 * 1024;

/// The Standard Webhooks headers; an error when the id cannot be one.
fn headers(msg_id: &str, body: &[u8], secrets: &[&SigningSecret]) -> Result<HeaderMap, String> {
    // The id is part of what is signed, delimited by dots: an id with a dot
    // could make two different messages sign alike.
    if msg_id.is_empty() || msg_id.contains('.') {
        return Err("the webhook id is empty or holds a '.'".into());
    }
    let id = HeaderValue::from_str(msg_id).map_err(|_| "the webhook id is not a valid header value".to_owned())?;
    let timestamp = chrono::Utc::now().timestamp();
    let signature = HeaderValue::from_str(&signature_header(secrets, msg_id, timestamp, body))
        .map_err(|_| "the signature is not a valid header value".to_owned())?;
    let mut headers = HeaderMap::with_capacity(4);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(WEBHOOK_ID, id);
    headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
    headers.insert(WEBHOOK_SIGNATURE, signature);
    Ok(headers)
}

/// What the receiver's answer comes to, as Standard Webhooks reads it.
fn outcome(status: StatusCode, headers: &HeaderMap) -> Outcome {
    let code = Some(i32::from(status.as_u16()));
    if status.is_success() {
        return Outcome::Delivered;
    }
    if status == StatusCode::GONE {
        return Outcome::Gone;
    }
    if status.is_redirection() {
        return Outcome::Retry {
            status: code,
            error: format!("HTTP {status}: redirects are not followed; update the endpoint URL"),
            retry_after: None,
        };
    }
    let retry_after = match status {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => headers
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| retry_after(value, SystemTime::now())),
        _ => None,
    };
    Outcome::Retry {
        status: code,
        error: format!("HTTP {status}"),
        retry_after,
    }
}

/// A `Retry-After` value: delta-seconds or an HTTP-date (a date already
/// past means now). `None` when it is neither.
fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits too many for a u64 are further off than any cap.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn retry(error: String) -> Outcome {
    Outcome::Retry {
        status: None,
        error,
        retry_after: None,
    }
}

fn refused(error: String) -> Outcome {
    Outcome::Refused { status: None, error }
}

/// The innermost cause's message (e.g. "Connection refused (os error
/// 111)"): reqwest's own message names the URL, whose query may hold a
/// token of the endpoint owner's.
fn root_cause(err: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if std::ptr::addr_eq(cause, err) {
        return err.to_string().replace(err.url().map_or("", Url::as_str), "…");
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes() {
        let none = HeaderMap::new();
        assert_eq!(outcome(StatusCode::OK, &none), Outcome::Delivered);
        assert_eq!(outcome(StatusCode::NO_CONTENT, &none), Outcome::Delivered);
        assert_eq!(outcome(StatusCode::GONE, &none), Outcome::Gone);
        for (status, code) in [
            (StatusCode::INTERNAL_SERVER_ERROR, 500),
            (StatusCode::NOT_FOUND, 404),
            (StatusCode::FOUND, 302),
            (StatusCode::TOO_MANY_REQUESTS, 429),
        ] {
            let Outcome::Retry { status: got, .. } = outcome(status, &none) else {
                panic!("{status} is retried");
            };
            assert_eq!(got, Some(code));
        }
    }

    #[test]
    fn retry_after_is_read_on_429_and_503_only() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        let after = |status| match outcome(status, &headers) {
            Outcome::Retry { retry_after, .. } => retry_after,
            _ => None,
        };
        assert_eq!(after(StatusCode::TOO_MANY_REQUESTS), Some(Duration::from_secs(7)));
        assert_eq!(after(StatusCode::SERVICE_UNAVAILABLE), Some(Duration::from_secs(7)));
        assert_eq!(after(StatusCode::INTERNAL_SERVER_ERROR), None);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap_or(SystemTime::UNIX_EPOCH);
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60)),
            "IMF-fixdate"
        );
        assert_eq!(
            retry_after("Sunday, 06-Nov-94 08:51:37 GMT", now),
            Some(Duration::from_secs(120)),
            "RFC 850"
        );
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "past"
        );
        assert_eq!(retry_after("-5", now), None);
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("", now), None);
    }

    #[test]
    fn ids_that_could_not_be_signed_safely_are_refused() -> anyhow::Result<()> {
        let secret = SigningSecret::generate()?;
        assert!(headers("msg.1", b"{}", &[&secret]).is_err());
        assert!(headers("", b"{}", &[&secret]).is_err());
        assert!(headers("msg\n1", b"{}", &[&secret]).is_err());
        let ok = headers("msg_1", b"{}", &[&secret]).map_err(anyhow::Error::msg)?;
        assert_eq!(ok.get(WEBHOOK_ID).map(HeaderValue::as_bytes), Some(&b"msg_1"[..]));
        assert_eq!(
            ok.get(CONTENT_TYPE).map(HeaderValue::as_bytes),
            Some(&b"application/json"[..])
        );
        assert!(ok.get(WEBHOOK_TIMESTAMP).is_some() && ok.get(WEBHOOK_SIGNATURE).is_some());
        Ok(())
    }
}
