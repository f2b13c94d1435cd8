//! Webhook deliveries against a real HTTP receiver on 127.0.0.1 that checks
//! every signature with its own HMAC code (not Keel's) and records what it
//! was sent.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use axum::{
    Router,
    body::Bytes,
    extract::{ConnectInfo, State},
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit as _, Mac as _};
use keel_notifications::{
    WebhookConfig,
    domain::Outcome,
    webhook::{Refusal, Sender, SigningSecret},
};
use sha2::Sha256;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    /// The sender's end of the connection.
    peer: SocketAddr,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    /// For each of the receiver's secrets, whether a signature verified.
    verified: Vec<bool>,
}

#[derive(Clone)]
struct Receiver {
    secrets: Arc<Vec<String>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// A receiver knowing `secrets` (as `whsec_...`), serving until the
    /// test's runtime ends: `/ok` answers 200, `/status/<code>` that code,
    /// `/retry-after` 429 with `Retry-After: 7`, `/redirect` a 302 to `/ok`.
    async fn start(secrets: &[&SigningSecret]) -> anyhow::Result<(Self, SocketAddr)> {
        let receiver = Receiver {
            secrets: Arc::new(secrets.iter().map(|s| s.to_whsec()).collect()),
            received: Arc::default(),
        };
        let app = Router::new()
            .route("/ok", post(answer))
            .route("/status/{code}", post(answer))
            .route("/retry-after", post(answer))
            .route("/redirect", post(answer))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            async move { axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await },
        );
        Ok((receiver, addr))
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

async fn answer(
    State(receiver): State<Receiver>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let verified = receiver
        .secrets
        .iter()
        .map(|secret| verify(secret, &headers, &body))
        .collect();
    let path = uri.path().to_owned();
    receiver
        .received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Received {
            peer,
            path: path.clone(),
            headers,
            body,
            verified,
        });
    match path.as_str() {
        "/retry-after" => (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "7")]).into_response(),
        "/redirect" => (StatusCode::FOUND, [(header::LOCATION, "/ok")]).into_response(),
        _ => {
            let code = path.strip_prefix("/status/").and_then(|code| code.parse().ok());
            code.and_then(|code| StatusCode::from_u16(code).ok())
                .unwrap_or(StatusCode::OK)
                .into_response()
        }
    }
}

/// A receiver's check, written from the specification: HMAC-SHA256 keyed
/// with the base64 after `whsec_`, over `id.timestamp.body`, compared in
/// constant time with each `v1` signature.
fn verify(whsec: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let Some(Ok(key)) = whsec.strip_prefix("whsec_").map(|b64| STANDARD.decode(b64)) else {
        return false;
    };
    let signed = [
        header("webhook-id").as_bytes(),
        b".",
        header("webhook-timestamp").as_bytes(),
        b".",
        body,
    ]
    .concat();
    header("webhook-signature").split(' ').any(|entry| {
        let Some(("v1", signature)) = entry.split_once(',') else {
            return false;
        };
        let (Ok(signature), Ok(mut mac)) = (STANDARD.decode(signature), Hmac::<Sha256>::new_from_slice(&key)) else {
            return false;
        };
        mac.update(&signed);
        mac.verify_slice(&signature).is_ok()
    })
}

fn config(allow_private: bool, timeout_ms: u64) -> WebhookConfig {
    WebhookConfig {
        webhook_allow_private: allow_private,
        webhook_timeout_ms: timeout_ms,
        webhook_retry_scale: 0.001,
        webhook_disable_after_secs: 60,
    }
}

const BODY: &[u8] = br#"{"type":"order.paid","timestamp":"2026-12-01T12:00:00Z","data":{"orderId":"o1"}}"#;

#[tokio::test]
async fn a_2xx_is_delivered_signed_and_a_retry_keeps_its_id() -> anyhow::Result<()> {
    let secret = SigningSecret::generate()?;
    let (receiver, addr) = Receiver::start(&[&secret]).await?;
    let sender = Sender::new(&config(true, 5_000))?;
    let url = format!("http://{addr}/ok");

    assert_eq!(sender.send(&url, "msg_one", BODY, &[&secret]).await, Outcome::Delivered);
    assert_eq!(sender.send(&url, "msg_one", BODY, &[&secret]).await, Outcome::Delivered);

    let received = receiver.received();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[0].peer, received[1].peer,
        "the second send reuses the connection"
    );
    let now = chrono::Utc::now().timestamp();
    for request in &received {
        assert_eq!(request.verified, [true], "the signature verifies");
        assert_eq!(request.body, BODY);
        let header = |name| request.headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(header("webhook-id"), Some("msg_one"), "the same id on every attempt");
        assert_eq!(header("content-type"), Some("application/json"));
        let sent_at: i64 = header("webhook-timestamp").context("a timestamp")?.parse()?;
        assert!((now - sent_at).abs() < 60, "{sent_at} is now");
        let agent = header("user-agent").context("a user agent")?;
        assert!(agent.starts_with("Keel-Webhooks/"), "{agent}");
        let signature = header("webhook-signature").context("a signature")?;
        assert!(signature.starts_with("v1,") && !signature.contains(' '), "{signature}");
    }
    Ok(())
}

#[tokio::test]
async fn a_500_is_retried() -> anyhow::Result<()> {
    let secret = SigningSecret::generate()?;
    let (receiver, addr) = Receiver::start(&[&secret]).await?;
    let sender = Sender::new(&config(true, 5_000))?;
    let outcome = sender
        .send(&format!("http://{addr}/status/500"), "msg_500", BODY, &[&secret])
        .await;
    let Outcome::Retry {
        status: Some(500),
        retry_after: None,
        error,
    } = outcome
    else {
        panic!("a 500 is retried: {outcome:?}");
    };
    assert!(!error.contains("order.paid"), "no body in the error: {error}");
    assert_eq!(receiver.received().len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_410_is_gone() -> anyhow::Result<()> {
    let secret = SigningSecret::generate()?;
    let (_receiver, addr) = Receiver::start(&[&secret]).await?;
    let sender = Sender::new(&config(true, 5_000))?;
    let outcome = sender
        .send(&format!("http://{addr}/status/410"), "msg_410", BODY, &[&secret])
        .await;
    assert_eq!(outcome, Outcome::Gone);
    Ok(())
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_no_sooner() -> anyhow::Result<()> {
    let secret = SigningSecret::generate()?;
    let (_receiver, addr) = Receiver::start(&[&secret]).await?;
    let sender = Sender::new(&config(true, 5_000))?;
    let outcome = sender
        .send(&format!("http://{addr}/retry-after"), "msg_429", BODY, &[&secret])
        .await;
    let Outcome::Retry {
        status: Some(429),
        retry_after,
        ..
    } = outcome
    else {
        panic!("a 429 is retried: {outcome:?}");
    };
    assert_eq!(retry_after, Some(Duration::from_secs(7)));
    Ok(())
}

#[tokio::test]
async fn redirects_are_failures_and_not_followed() -> anyhow::Result<()> {
    let secret = SigningSecret::generate()?;
    let (receiver, addr) = Receiver::start(&[&secret]).await?;
    let sender = Sender::new(&config(true, 5_000))?;
    let outcome = sender
        .send(&format!("http://{addr}/redirect"), "msg_302", BODY, &[&secret])
        .await;
    assert!(
        matches!(outcome, Outcome::Retry { status: Some(302), .. }),
        "{outcome:?}"
    );
    let paths: Vec<_> = receiver.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/redirect"], "the redirect was not followed");
    Ok(())
}

#[tokio::test]
async fn a_receiver_that_never_answers_is_retried_after_the_timeout() -> anyhow::Result<()> {
    // Accepts connections and holds them without a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let secret = SigningSecret::generate()?;
    let sender = Sender::new(&config(true, 300))?;
    let started = Instant::now();
    let outcome = sender
        .send(&format!("http://{addr}/silent"), "msg_silent", BODY, &[&secret])
        .await;
    let Outcome::Retry {
        status: None,
        ref error,
        retry_after: None,
    } = outcome
    else {
        panic!("a timeout is retried: {outcome:?}");
    };
    assert!(error.contains("timed out"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    held.abort();
    Ok(())
}

#[tokio::test]
async fn nothing_listening_is_retried() -> anyhow::Result<()> {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?
    };
    let secret = SigningSecret::generate()?;
    let sender = Sender::new(&config(true, 2_000))?;
    let outcome = sender
        .send(&format!("http://{addr}/ok"), "msg_closed", BODY, &[&secret])
        .await;
    let Outcome::Retry {
        status: None,
        ref error,
        ..
    } = outcome
    else {
        panic!("a refused connection is retried: {outcome:?}");
    };
    assert!(error.starts_with("could not connect"), "{error}");
    assert!(!error.contains("http://"), "no URL: {error}");
    Ok(())
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_retried() -> anyhow::Result<()> {
    let secret = SigningSecret::generate()?;
    let sender = Sender::new(&config(false, 5_000))?;
    // `.invalid` never resolves (RFC 6761); DNS may answer later, so this is
    // no reason to give up on the delivery.
    let outcome = sender
        .send("https://nowhere.invalid/hook", "msg_nxdomain", BODY, &[&secret])
        .await;
    let Outcome::Retry {
        status: None,
        ref error,
        ..
    } = outcome
    else {
        panic!("an unresolved name is retried: {outcome:?}");
    };
    assert!(error.starts_with("nowhere.invalid does not resolve"), "{error}");
    // Registration accepts it: the name may get an address later, and
    // every delivery checks again.
    assert_eq!(
        sender.check_endpoint("https://nowhere.invalid/hook").await?.as_str(),
        "https://nowhere.invalid/hook"
    );
    Ok(())
}

#[tokio::test]
async fn private_addresses_are_refused_and_nothing_is_sent() -> anyhow::Result<()> {
    let secret = SigningSecret::generate()?;
    let (receiver, addr) = Receiver::start(&[&secret]).await?;
    let sender = Sender::new(&config(false, 5_000))?;
    let port = addr.port();
    for url in [
        format!("https://127.0.0.1:{port}/ok"),
        format!("https://localhost:{port}/ok"),
        format!("https://[::ffff:127.0.0.1]:{port}/ok"),
    ] {
        let outcome = sender.send(&url, "msg_private", BODY, &[&secret]).await;
        let Outcome::Refused { status: None, error } = outcome else {
            panic!("{url} is refused: {outcome:?}");
        };
        assert!(
            error.contains("a loopback address; endpoints must be public"),
            "{error}"
        );
        if url.contains("localhost") {
            // A name passes the URL check; the client's guarded resolver
            // refuses it at the connection, as it would a rebound name.
            assert!(error.starts_with("localhost resolves to "), "{error}");
        }
        let refusal = sender.check_endpoint(&url).await.expect_err("refused at registration");
        assert!(matches!(refusal, Refusal::Forbidden { .. }), "{refusal:?}");
    }
    assert!(receiver.received().is_empty(), "nothing reached the receiver");
    Ok(())
}

#[tokio::test]
async fn plain_http_is_refused_unless_private_addresses_are_allowed() -> anyhow::Result<()> {
    let secret = SigningSecret::generate()?;
    let (receiver, addr) = Receiver::start(&[&secret]).await?;
    let strict = Sender::new(&config(false, 5_000))?;
    let outcome = strict
        .send("http://example.com/hook", "msg_http", BODY, &[&secret])
        .await;
    let Outcome::Refused { error, .. } = outcome else {
        panic!("http:// is refused: {outcome:?}");
    };
    assert!(error.contains("must be https://"), "{error}");
    assert!(matches!(
        strict.check_endpoint("http://example.com/hook").await,
        Err(Refusal::Scheme { .. })
    ));

    let lax = Sender::new(&config(true, 5_000))?;
    let url = format!("http://{addr}/ok");
    assert_eq!(lax.check_endpoint(&url).await?.as_str(), url);
    assert_eq!(lax.send(&url, "msg_http", BODY, &[&secret]).await, Outcome::Delivered);
    assert_eq!(receiver.received().len(), 1);
    Ok(())
}

#[tokio::test]
async fn two_secrets_sign_twice_and_each_signature_verifies() -> anyhow::Result<()> {
    let (new, old, stranger) = (
        SigningSecret::generate()?,
        SigningSecret::generate()?,
        SigningSecret::generate()?,
    );
    let (receiver, addr) = Receiver::start(&[&new, &old, &stranger]).await?;
    let sender = Sender::new(&config(true, 5_000))?;
    let outcome = sender
        .send(&format!("http://{addr}/ok"), "msg_rotated", BODY, &[&new, &old])
        .await;
    assert_eq!(outcome, Outcome::Delivered);
    let received = receiver.received();
    let [request] = received.as_slice() else {
        panic!("one request: {received:?}");
    };
    assert_eq!(
        request.verified,
        [true, true, false],
        "new and old verify, a stranger does not"
    );
    let signatures = request
        .headers
        .get("webhook-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    Ok(())
}

#[tokio::test]
async fn a_delivery_without_secrets_is_refused() -> anyhow::Result<()> {
    let (receiver, addr) = Receiver::start(&[]).await?;
    let sender = Sender::new(&config(true, 5_000))?;
    let outcome = sender
        .send(&format!("http://{addr}/ok"), "msg_unsigned", BODY, &[])
        .await;
    assert!(matches!(outcome, Outcome::Refused { .. }), "{outcome:?}");
    assert!(receiver.received().is_empty());
    Ok(())
}
