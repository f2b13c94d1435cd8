//! Clients for the gateway's server streams: Server-Sent Events read as they
//! arrive, and WebSocket on the same route.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt as _;
use http::{Request, header};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio_tungstenite::tungstenite::{
    self, Message, client::IntoClientRequest as _, protocol::frame::coding::CloseCode,
};

use crate::http::TestGateway;

/// How long any one read may wait on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(10);

/// One Server-Sent Event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// Its `id:`.
    pub id: Option<String>,
    /// Its `event:` (none for plain data).
    pub event: Option<String>,
    /// Its `data:`.
    pub data: Option<String>,
    /// Its `retry:`.
    pub retry: Option<String>,
}

/// An open event stream, read as it arrives.
#[derive(Debug)]
pub struct Sse {
    body: hyper::body::Incoming,
    buffer: String,
}

impl Sse {
    /// GETs `path` on the gateway as an event stream, with a bearer token
    /// and a `Last-Event-ID` when given.
    pub async fn open(
        gateway: &TestGateway,
        path: &str,
        token: Option<&str>,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<(http::response::Parts, Sse)> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let mut request = Request::get(format!("http://{}{path}", gateway.addr())).body(Empty::new())?;
        if let Some(token) = token {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, format!("Bearer {token}").parse()?);
        }
        if let Some(id) = last_event_id {
            request.headers_mut().insert("last-event-id", id.parse()?);
        }
        let (parts, body) = client.request(request).await?.into_parts();
        Ok((
            parts,
            Sse {
                body,
                buffer: String::new(),
            },
        ))
    }

    /// The next event (comments skipped); None when the stream ends.
    pub async fn next(&mut self) -> anyhow::Result<Option<SseEvent>> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                for line in block.lines() {
                    let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                    match field {
                        "id" => event.id = Some(value.to_owned()),
                        "event" => event.event = Some(value.to_owned()),
                        "data" => event.data = Some(value.to_owned()),
                        "retry" => event.retry = Some(value.to_owned()),
                        _ => {}
                    }
                }
                if event != SseEvent::default() {
                    return Ok(Some(event));
                }
                continue;
            }
            match tokio::time::timeout(PATIENCE, self.body.frame())
                .await
                .context("no event in time")?
            {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buffer.push_str(std::str::from_utf8(&data)?);
                    }
                }
            }
        }
    }

    /// The next `data:` event: its id and its JSON text.
    pub async fn data(&mut self) -> anyhow::Result<(Option<String>, String)> {
        let event = self.next().await?.context("the stream ended")?;
        anyhow::ensure!(event.event.is_none(), "expected data, got {event:?}");
        Ok((event.id, event.data.context("an event without data")?))
    }
}

/// A WebSocket to the gateway.
pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `path` on the gateway with these extra headers.
pub async fn websocket(
    gateway: &TestGateway,
    path: &str,
    headers: &[(&'static str, String)],
) -> Result<(Socket, tungstenite::handshake::client::Response), tungstenite::Error> {
    let mut request = format!("ws://{}{path}", gateway.addr()).into_client_request()?;
    for (name, value) in headers {
        let value = value
            .parse()
            .map_err(|_| tungstenite::Error::Url(tungstenite::error::UrlError::UnableToConnect(value.clone())))?;
        request.headers_mut().insert(*name, value);
    }
    tokio_tungstenite::connect_async(request).await
}

/// The next text frame (pings skipped).
pub async fn text(socket: &mut Socket) -> anyhow::Result<String> {
    loop {
        let message = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .context("no frame in time")?
            .context("the socket ended")??;
        match message {
            Message::Text(text) => return Ok(text.as_str().to_owned()),
            Message::Ping(_) | Message::Pong(_) => {}
            other => anyhow::bail!("expected a text frame, got {other:?}"),
        }
    }
}

/// The close frame's code, once the closing handshake is done.
pub async fn close_code(socket: &mut Socket) -> anyhow::Result<CloseCode> {
    loop {
        let message = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .context("no frame in time")?
            .context("the socket ended without a close frame")??;
        match message {
            Message::Close(Some(frame)) => {
                // Reading on sends the answering close frame, and ends when
                // the gateway drops the connection.
                while tokio::time::timeout(PATIENCE, socket.next()).await?.is_some() {}
                return Ok(frame.code);
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => anyhow::bail!("expected a close frame, got {other:?}"),
        }
    }
}
