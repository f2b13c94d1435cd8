//! A webhook receiver over real HTTP on port 0: it records every POST,
//! answers as scripted (a status, a `Retry-After`, or never), and checks
//! Standard Webhooks signatures with its own HMAC code, written apart from
//! Keel's signer so the two can't share a mistake.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// This status, empty body.
    Status(u16),
    /// This status with `Retry-After: <seconds>`.
    RetryAfter(u16, u64),
    /// Never answer (the sender times out).
    Hang,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request path.
    pub path: String,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

impl Received {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Whether one of the `webhook-signature` entries is the HMAC-SHA256 of
    /// `id.timestamp.body` under `whsec` (a `whsec_...` secret).
    pub fn signed_with(&self, whsec: &str) -> bool {
        let engine = base64::engine::general_purpose::STANDARD;
        let Some(key) = whsec.strip_prefix("whsec_").and_then(|k| engine.decode(k).ok()) else {
            return false;
        };
        let (Some(id), Some(timestamp), Some(signatures)) = (
            self.header("webhook-id"),
            self.header("webhook-timestamp"),
            self.header("webhook-signature"),
        ) else {
            return false;
        };
        signatures.split(' ').any(|entry| {
            let Some(signature) = entry.strip_prefix("v1,").and_then(|s| engine.decode(s).ok()) else {
                return false;
            };
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
                return false;
            };
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(&self.body);
            mac.verify_slice(&signature).is_ok()
        })
    }
}

#[derive(Debug, Default)]
struct Inner {
    script: VecDeque<Answer>,
    received: Vec<Received>,
}

/// The receiver; it stops when dropped.
#[derive(Debug, Clone)]
pub struct WebhookReceiver {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    server: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        if Arc::strong_count(&self.server) == 1 {
            self.server.abort();
        }
    }
}

impl WebhookReceiver {
    /// Starts a receiver that answers 204 unless scripted otherwise.
    pub async fn start() -> anyhow::Result<Self> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new().route("/{*path}", post(receive)).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::warn!(error = %err, "the webhook receiver stopped");
            }
        });
        Ok(Self {
            addr,
            inner,
            server: Arc::new(server),
        })
    }

    /// The URL of `path` on the receiver (`/hooks/a`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers the next requests as `answers` say, in order.
    pub fn script(&self, answers: &[Answer]) {
        self.lock().script.extend(answers.iter().copied());
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// Waits until `count` requests arrived (at most `timeout`).
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> anyhow::Result<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let received = self.received();
            if received.len() >= count {
                return Ok(received);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(anyhow::anyhow!("{} of {count} webhooks arrived", received.len())).context("timed out");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = {
        let mut inner = inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.received.push(Received {
            path: uri.path().to_owned(),
            headers,
            body,
        });
        inner.script.pop_front().unwrap_or(Answer::Status(204))
    };
    match answer {
        Answer::Status(code) => StatusCode::from_u16(code)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
        Answer::RetryAfter(code, seconds) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            [("retry-after", seconds.to_string())],
        )
            .into_response(),
        Answer::Hang => {
            std::future::pending::<()>().await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
    }
}
