//! The gateway's HTTP/1.1 connections: a cap on how many are open, and
//! timeouts that close the ones a slow or idle client would hold forever.
//!
//! Each connection has a watchdog that knows what the connection is doing:
//! idle between requests (closed after the idle timeout), receiving a
//! request's headers (closed if they are not complete within the header
//! timeout, counted from the request's first byte), or serving requests (left
//! alone: the body read timeout and the upstream timeout bound that). In any
//! phase, a client that reads nothing while the gateway has bytes for it
//! (its TCP window shut) is dropped after the send timeout: an event stream
//! nobody reads must not hold its connection, upstream stream and the
//! client's stream places forever.
//!
//! A connection upgraded to WebSocket leaves hyper (and its watchdog: the
//! session pings its client instead), but keeps its place among the open
//! connections through its [`ConnectionSlot`] until the session ends, so
//! the cap and the shutdown's wait count it.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// How long clients may take, and how many may be connected.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From a request's first byte to its last header.
    pub header_timeout: Duration,
    /// How long a connection may sit with no request.
    pub idle_timeout: Duration,
    /// The most connections open at once; beyond it, new ones wait in the
    /// listen queue.
    pub max_connections: usize,
    /// How long a write to the client may stay blocked.
    pub send_timeout: Duration,
}

/// A connection's place among the open connections; every request carries
/// it (as an extension), and the connection counts as open while any clone
/// lives.
#[derive(Debug, Clone)]
pub struct ConnectionSlot {
    _permit: Arc<OwnedSemaphorePermit>,
}

/// Serves `router` on `listener` until `stopping` is cancelled; then stops
/// accepting, lets open connections finish their requests, and returns when
/// they have all closed or `grace` has passed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stopping: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit?,
            () = stopping.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, or a connection reset while
                    // queued: the listener itself is fine.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopping.cancelled() => break,
        };
        let router = router.clone();
        let stopping = stopping.clone();
        let slot = ConnectionSlot {
            _permit: Arc::new(permit),
        };
        tokio::spawn(async move {
            serve_connection(stream, peer, router, limits, stopping, slot).await;
        });
    }
    // Every permit back means every connection has closed.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, permits.acquire_many(all)).await.is_err() {
        tracing::warn!(?grace, "requests still open after the grace period were cut");
    }
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    stopping: CancellationToken,
    slot: ConnectionSlot,
) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "TCP_NODELAY");
    }
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            let in_flight = activity.begin();
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(slot.clone());
            let router = router.clone();
            async move {
                let response = router.oneshot(request.map(Body::new)).await?;
                // The request counts as in flight until its body is sent, so
                // a long event stream is not mistaken for an idle connection.
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(InFlightBody {
                        body,
                        _in_flight: in_flight,
                    })
                }))
            }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(io, service)
        // WebSocket: the connection leaves hyper after its 101.
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => {
            if let Err(err) = served {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        }
        reason = activity.expired(limits) => {
            tracing::debug!(%peer, reason, "closing a connection");
        }
        () = stopping.cancelled() => {
            connection.as_mut().graceful_shutdown();
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "connection ended with an error while draining");
            }
        }
    }
}

/// What a connection is doing, and since when its writes have been
/// blocked, if they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    phase: Phase,
    write_blocked: Option<Instant>,
}

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request since this instant.
    Idle(Instant),
    /// A request's first bytes arrived at this instant; its headers have not
    /// all arrived yet.
    Head(Instant),
    /// This many requests are being served.
    Busy(usize),
}

/// A connection's state, watched by its watchdog.
#[derive(Debug)]
struct Activity {
    state: watch::Sender<State>,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: watch::Sender::new(State {
                phase: Phase::Idle(Instant::now()),
                write_blocked: None,
            }),
        }
    }

    /// Applies `change`, waking the watchdog only if the state changed.
    fn modify(&self, change: impl FnOnce(State) -> State) {
        self.state.send_if_modified(|state| {
            let next = change(*state);
            let changed = next != *state;
            *state = next;
            changed
        });
    }

    /// Applies `change` to the phase.
    fn update(&self, change: impl FnOnce(Phase) -> Phase) {
        self.modify(|state| State {
            phase: change(state.phase),
            ..state
        });
    }

    /// A write could not go out: the client's window is shut.
    fn write_blocked(&self) {
        self.modify(|state| State {
            write_blocked: state.write_blocked.or_else(|| Some(Instant::now())),
            ..state
        });
    }

    /// A write went out.
    fn write_flowed(&self) {
        self.modify(|state| State {
            write_blocked: None,
            ..state
        });
    }

    /// Bytes arrived from the client.
    fn read(&self) {
        self.update(|phase| match phase {
            Phase::Idle(_) => Phase::Head(Instant::now()),
            other => other,
        });
    }

    /// A request's headers are in: it is being served until the guard drops.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.update(|phase| match phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Idle(_) | Phase::Head(_) => Phase::Busy(1),
        });
        InFlight(self.clone())
    }

    /// Resolves when the connection has been idle, or receiving headers, or
    /// unable to write, for too long.
    async fn expired(&self, limits: Limits) -> &'static str {
        let mut phases = self.state.subscribe();
        loop {
            let state = *phases.borrow_and_update();
            let phase = match state.phase {
                Phase::Idle(since) => Some((since + limits.idle_timeout, "idle timeout")),
                Phase::Head(since) => Some((since + limits.header_timeout, "header read timeout")),
                // The request's own timeouts bound it.
                Phase::Busy(_) => None,
            };
            let blocked = state
                .write_blocked
                .map(|since| (since + limits.send_timeout, "send timeout"));
            let deadline = match (phase, blocked) {
                (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
                (a, b) => a.or(b),
            };
            let changed = match deadline {
                Some((deadline, reason)) => tokio::select! {
                    () = tokio::time::sleep_until(deadline) => return reason,
                    changed = phases.changed() => changed,
                },
                None => phases.changed().await,
            };
            if changed.is_err() {
                // The connection is gone; its task ends on its own.
                return std::future::pending().await;
            }
        }
    }
}

/// One request being served; dropping it (the response sent, or the client
/// gone) makes the connection idle again when it was the last.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.update(|phase| match phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        });
    }
}

/// A response body that keeps its request in flight until it is done.
struct InFlightBody {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for InFlightBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The connection's socket, telling its watchdog when bytes arrive.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read();
        }
        polled
    }
}

impl Watched {
    /// Tells the watchdog whether a write went out or is stuck.
    fn noting<T>(&self, polled: Poll<T>) -> Poll<T> {
        match polled {
            Poll::Pending => self.activity.write_blocked(),
            Poll::Ready(_) => self.activity.write_flowed(),
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        this.noting(polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.noting(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
