//! Server streams over WebSocket (RFC 6455), on the same routes as their
//! Server-Sent Events: a `GET` with `Upgrade: websocket` is authenticated,
//! rate-limited and bound like any request, the upstream stream is opened,
//! and only then is the connection upgraded (so a refused call is a plain
//! HTTP error, not a socket closed at once).
//!
//! Each reply is one text frame holding the same JSON as an SSE `data:`
//! line. An upstream error is one text frame `{"error": <google.rpc.Status>}`
//! followed by a close frame whose code says what to do next:
//!
//! | why the stream ended | close code |
//! |---|---|
//! | the upstream finished it | 1000 normal |
//! | UNAVAILABLE, or the gateway is stopping | 1001 going away: reconnect |
//! | UNAUTHENTICATED, PERMISSION_DENIED | 1008 policy violation: do not retry as is |
//! | INTERNAL, UNKNOWN, DATA_LOSS, UNIMPLEMENTED | 1011 internal error |
//! | any other code (ABORTED/STREAM_BEHIND, ...) | 1000 normal: the error frame says why |
//!
//! The client closing (or vanishing: no pong for three keep-alive periods)
//! ends the upstream call. Frames the client sends are not read as requests.
//!
//! Browsers cannot set `Authorization` on a WebSocket, so the access token
//! may also come as a subprotocol: `Sec-WebSocket-Protocol: keel.v1,
//! bearer.<token>`; the gateway then answers with `keel.v1`. A header is
//! never logged, unlike a URL in proxies' access logs, which is why no query
//! parameter carries the token.

use std::time::Duration;

use axum::{body::Body, response::Response};
use base64::Engine as _;
use futures::{SinkExt as _, Stream, StreamExt as _};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prost_reflect::DynamicMessage;
use tokio::time::Instant;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        handshake::derive_accept_key,
        protocol::{CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode},
    },
};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::Instrument as _;

use crate::{
    connections::ConnectionSlot,
    descriptors::Descriptors,
    error::{ApiError, status_json},
    respond::{KEEP_ALIVE, to_json},
    routes::Route,
};

/// The subprotocol the gateway speaks, answered when the client offers it.
pub const PROTOCOL: &str = "keel.v1";

/// The prefix of the subprotocol that carries an access token.
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

/// How long the gateway waits for the client's answer to its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A client's request to upgrade, checked.
#[derive(Debug)]
pub struct Handshake {
    accept: String,
    protocol: bool,
    bearer: Option<String>,
}

impl Handshake {
    /// The upgrade `headers` ask for; None when they ask for none. A
    /// malformed handshake is 400, an unsupported version 426.
    pub fn read(headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        if !has_token(headers, header::UPGRADE, "websocket") {
            return Ok(None);
        }
        if !has_token(headers, header::CONNECTION, "upgrade") {
            return Err(ApiError::bad_request("a WebSocket upgrade needs `connection: upgrade`"));
        }
        if headers.get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()) != Some("13") {
            return Err(ApiError::bad_request("only WebSocket version 13 is supported")
                .with_http_status(StatusCode::UPGRADE_REQUIRED)
                .with_header(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13")));
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .map(HeaderValue::as_bytes)
            .filter(|key| {
                base64::engine::general_purpose::STANDARD
                    .decode(key)
                    .is_ok_and(|nonce| nonce.len() == 16)
            })
            .ok_or_else(|| ApiError::bad_request("sec-websocket-key must be a base64 16-byte nonce"))?;
        let offered: Vec<&str> = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let bearer = offered
            .iter()
            .find_map(|p| p.strip_prefix(BEARER_PROTOCOL_PREFIX))
            .filter(|token| !token.is_empty())
            .map(str::to_owned);
        if bearer.is_some() && !offered.contains(&PROTOCOL) {
            // The answer must name one offered protocol, and it cannot be the
            // token's (that would echo the token back).
            return Err(ApiError::bad_request(format!(
                "a token in sec-websocket-protocol needs {PROTOCOL} offered too"
            )));
        }
        Ok(Some(Handshake {
            accept: derive_accept_key(key),
            protocol: offered.contains(&PROTOCOL),
            bearer,
        }))
    }

    /// The access token the subprotocols carry, if any.
    pub fn bearer(&self) -> Option<&str> {
        self.bearer.as_deref()
    }
}

/// Whether a comma-separated header holds `token` (case-insensitively).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// What a session needs besides the socket.
#[derive(Debug)]
pub struct Session {
    /// The route, for the replies' JSON.
    pub route: Route,
    /// For the error frames' `google.rpc.Status`.
    pub descriptors: Descriptors,
    /// Cancelled when the gateway stops.
    pub stop: CancellationToken,
    /// The connection's place among the gateway's connections, held until
    /// the session ends (hyper lets go of an upgraded connection).
    pub slot: Option<ConnectionSlot>,
    /// The largest frame a client may send (the body limit).
    pub max_message_bytes: usize,
    /// How long one frame may take to reach the client before it is dropped
    /// as too slow (its TCP window stays shut): the gateway's send timeout.
    pub send_timeout: Duration,
}

/// Answers `101 Switching Protocols` and, once hyper hands over the
/// connection, runs the session on its own task.
pub fn accept(
    handshake: Handshake,
    upgrade: OnUpgrade,
    session: Session,
    replies: impl Stream<Item = Result<DynamicMessage, Status>> + Send + 'static,
) -> Response {
    let task = async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(error = %err, "the WebSocket upgrade failed");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(session.max_message_bytes))
            .max_frame_size(Some(session.max_message_bytes));
        let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        // The session (and its connection slot) lives until the socket closes.
        run(socket, session, replies).await;
    };
    tokio::spawn(task.instrument(tracing::Span::current()));

    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&handshake.accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if handshake.protocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(PROTOCOL));
    }
    response
}

/// Why a session ends.
enum End {
    /// Send this close frame (after the error frame, if any).
    Close(CloseCode, &'static str, Option<Message>),
    /// The client closed or is gone; nothing more to send.
    Gone,
}

async fn run<S>(
    socket: WebSocketStream<S>,
    session: Session,
    replies: impl Stream<Item = Result<DynamicMessage, Status>> + Send + 'static,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut source) = socket.split();
    // Boxed, not pinned on the stack, so it can be dropped before the close.
    let mut replies = Box::pin(replies);
    let mut pings = tokio::time::interval_at(Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    let mut heard = Instant::now();
    let end = loop {
        let outgoing = tokio::select! {
            reply = replies.next() => match reply {
                Some(Ok(message)) => match to_json(&session.route, &message).map(String::from_utf8) {
                    Ok(Ok(json)) => Message::text(json),
                    Ok(Err(_)) => break error(&session, &Status::internal("the reply is not UTF-8")),
                    Err(status) => break error(&session, &status),
                },
                Some(Err(status)) => break error(&session, &status),
                None => break End::Close(CloseCode::Normal, "the stream ended", None),
            },
            incoming = source.next() => match incoming {
                Some(Ok(Message::Close(_))) => {
                    // tungstenite has queued the answering close frame;
                    // flushing sends it.
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.flush()).await;
                    break End::Gone;
                }
                Some(Err(_)) | None => break End::Gone,
                Some(Ok(_)) => {
                    // Pings are answered on the next write; flush so the
                    // pong goes now.
                    heard = Instant::now();
                    if sink.flush().await.is_err() {
                        break End::Gone;
                    }
                    continue;
                }
            },
            _ = pings.tick() => {
                if heard.elapsed() > KEEP_ALIVE * 3 {
                    break End::Gone;
                }
                Message::Ping(Default::default())
            },
            () = session.stop.cancelled() => break End::Close(CloseCode::Away, "the gateway is stopping", None),
        };
        let sent = tokio::select! {
            sent = tokio::time::timeout(session.send_timeout, sink.send(outgoing)) => matches!(sent, Ok(Ok(()))),
            () = session.stop.cancelled() => false,
        };
        if !sent {
            break End::Gone;
        }
    };
    // Dropping the stream cancels the upstream call (tonic resets the HTTP/2
    // stream), whether the client or the gateway ended the session.
    drop(replies);
    if let End::Close(code, reason, frame) = end {
        let farewell = async {
            if let Some(frame) = frame {
                tokio::time::timeout(session.send_timeout, sink.send(frame)).await??;
            }
            let close = Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }));
            tokio::time::timeout(CLOSE_TIMEOUT, sink.send(close)).await??;
            // The client answers with its own close frame; then the
            // connection may go. A client that does not is not waited for
            // long: the gateway may be stopping.
            let answer = async {
                while let Some(Ok(message)) = source.next().await {
                    if message.is_close() {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, answer).await;
            Ok::<_, anyhow::Error>(())
        };
        if let Err(err) = farewell.await {
            tracing::debug!(error = %err, "closing a WebSocket");
        }
    }
}

/// The error frame and the close that follows it.
fn error(session: &Session, status: &Status) -> End {
    let json = status_json(&session.descriptors, status);
    let frame = [b"{\"error\":".as_slice(), &json, b"}"].concat();
    let frame = String::from_utf8(frame).ok().map(Message::text);
    let (code, reason) = close_code(status.code());
    End::Close(code, reason, frame)
}

/// The close code for a stream that ended with `code` (see the module docs).
pub fn close_code(code: Code) -> (CloseCode, &'static str) {
    match code {
        Code::Unavailable => (CloseCode::Away, "the service is unavailable"),
        Code::Unauthenticated | Code::PermissionDenied => (CloseCode::Policy, "not allowed"),
        Code::Internal | Code::Unknown | Code::DataLoss | Code::Unimplemented => (CloseCode::Error, "internal error"),
        _ => (CloseCode::Normal, "the stream ended with an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (header::HeaderName::from_static(name), HeaderValue::from_static(value)))
            .collect()
    }

    const UPGRADE: [(&str, &str); 4] = [
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn a_valid_handshake_is_accepted_with_the_rfc_key() {
        let handshake = Handshake::read(&headers(&UPGRADE)).expect("valid").expect("an upgrade");
        // RFC 6455 section 1.3's example.
        assert_eq!(handshake.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(!handshake.protocol);
        assert_eq!(handshake.bearer(), None);
        assert!(Handshake::read(&HeaderMap::new()).expect("no upgrade").is_none());
    }

    #[test]
    fn the_token_may_ride_in_the_subprotocols() {
        let mut with = UPGRADE.to_vec();
        with.push(("sec-websocket-protocol", "keel.v1, bearer.abc.def"));
        let handshake = Handshake::read(&headers(&with)).expect("valid").expect("an upgrade");
        assert!(handshake.protocol);
        assert_eq!(handshake.bearer(), Some("abc.def"));
        let mut alone = UPGRADE.to_vec();
        alone.push(("sec-websocket-protocol", "bearer.abc"));
        assert!(Handshake::read(&headers(&alone)).is_err());
    }

    #[test]
    fn bad_handshakes_are_refused() {
        let mut old = UPGRADE.to_vec();
        old[2] = ("sec-websocket-version", "8");
        let err = Handshake::read(&headers(&old)).expect_err("version 8");
        let response = err.into_response(&Descriptors::load().expect("descriptors"));
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        let mut keyless = UPGRADE.to_vec();
        keyless[3] = ("sec-websocket-key", "short");
        assert!(Handshake::read(&headers(&keyless)).is_err());
    }
}
