//! A delaying TCP proxy: put it between a service and a partner (accounts,
//! the card gateway) to make the partner's replies, or the requests to it,
//! arrive late. Bytes are held per direction for the delay set when they
//! arrive, in order and pipelined (two replies a millisecond apart still
//! arrive a millisecond apart), over real TCP on port 0.
//!
//! ```no_run
//! # async fn demo(accounts: std::net::SocketAddr) -> anyhow::Result<()> {
//! use std::time::Duration;
//! let proxy = keel_testkit::proxy::DelayProxy::start(accounts).await?;
//! proxy.delay_replies(Duration::from_secs(1));
//! // point the service at proxy.url() ...
//! # Ok(()) }
//! ```

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
    time::Instant,
};

/// The delays of each direction.
#[derive(Debug, Default, Clone, Copy)]
struct Delays {
    requests: Duration,
    replies: Duration,
}

/// A running proxy; it stops accepting when dropped (open connections end
/// with their peers).
#[derive(Debug)]
pub struct DelayProxy {
    addr: SocketAddr,
    delays: Arc<Mutex<Delays>>,
    accept: JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on 127.0.0.1:0 and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let delays = Arc::new(Mutex::new(Delays::default()));
        let shared = delays.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let delays = shared.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        relay(client, server, delays).await;
                    }
                });
            }
        });
        Ok(Self { addr, delays, accept })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Holds every byte from the target for `delay` from now on (zero: none).
    pub fn delay_replies(&self, delay: Duration) {
        self.set(|d| d.replies = delay);
    }

    /// Holds every byte to the target for `delay` from now on (zero: none).
    pub fn delay_requests(&self, delay: Duration) {
        self.set(|d| d.requests = delay);
    }

    fn set(&self, change: impl FnOnce(&mut Delays)) {
        let mut delays = self.delays.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut delays);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, delays: Arc<Mutex<Delays>>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let to_server = pump(client_read, server_write, delays.clone(), |d| d.requests);
    let to_client = pump(server_read, client_write, delays, |d| d.replies);
    tokio::join!(to_server, to_client);
}

/// Copies `from` to `to`, each chunk held for the direction's delay as it
/// was when the chunk arrived.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delays: Arc<Mutex<Delays>>,
    delay_of: fn(&Delays) -> Duration,
) {
    let (send, mut held) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let delay = delay_of(&delays.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
                    if send.send((Instant::now() + delay, buffer[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = held.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
