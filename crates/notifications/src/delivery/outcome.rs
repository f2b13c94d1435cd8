//! What one attempt came to, as every channel reports it.

use std::time::Duration;

/// The result of one attempt at sending a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver took it (SMTP 2xx, HTTP 2xx).
    Delivered,
    /// Worth trying again later: a 4xx SMTP reply, a network error, a
    /// timeout, an HTTP error other than 410.
    Retry {
        /// The SMTP reply code or HTTP status; `None` when there was none.
        status: Option<i32>,
        /// A short description, never holding a secret.
        error: String,
        /// The receiver's `Retry-After`, when it gave one (429, 503).
        retry_after: Option<Duration>,
    },
    /// Refused for good (an SMTP 5xx, a URL the SSRF guard refuses): dead-
    /// lettered at once.
    Refused {
        /// The SMTP reply code or HTTP status; `None` when there was none.
        status: Option<i32>,
        /// A short description, never holding a secret.
        error: String,
    },
    /// The webhook receiver answered 410 Gone: the endpoint is disabled and
    /// nothing more is sent to it.
    Gone,
}
