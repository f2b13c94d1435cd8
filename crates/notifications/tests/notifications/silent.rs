//! Webhook endpoints that are there and never answer: real TCP listeners on
//! 127.0.0.1 that accept each connection, read the request and then say
//! nothing until the sender gives up and closes it. They record when each
//! request came and its `webhook-id`, and how many connections each had
//! open at once.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use tokio::{
    io::AsyncReadExt as _,
    net::{TcpListener, TcpStream},
};

/// One request that got no answer.
#[derive(Debug, Clone)]
pub struct Hung {
    /// Which endpoint (its index) it came to.
    pub endpoint: usize,
    /// When its head had arrived.
    pub at: Instant,
    /// Its `webhook-id` header.
    pub webhook_id: String,
}

#[derive(Debug, Default)]
struct State {
    requests: Vec<Hung>,
    /// Connections open now, per endpoint.
    open: HashMap<usize, usize>,
    /// The most each endpoint had open at once.
    most_open: HashMap<usize, usize>,
    /// The most open across all endpoints at once since the last
    /// [`Silent::reset_most_open_in_all`].
    most_open_in_all: usize,
}

/// A set of silent endpoints.
#[derive(Debug, Clone, Default)]
pub struct Silent {
    state: Arc<Mutex<State>>,
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Silent {
    /// `count` silent endpoints, each on a port of its own.
    pub async fn start(count: usize) -> anyhow::Result<Self> {
        let silent = Self::default();
        for endpoint in 0..count {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            silent
                .addrs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(listener.local_addr()?);
            let state = silent.state.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(hang(endpoint, stream, state.clone()));
                }
            });
        }
        Ok(silent)
    }

    /// The URL of endpoint `endpoint`.
    pub fn url(&self, endpoint: usize) -> String {
        let addrs = self.addrs.lock().unwrap_or_else(PoisonError::into_inner);
        format!("http://{}/hooks", addrs[endpoint])
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Hung> {
        self.lock().requests.clone()
    }

    /// The connections endpoint `endpoint` has open now.
    pub fn open(&self, endpoint: usize) -> usize {
        self.lock().open.get(&endpoint).copied().unwrap_or(0)
    }

    /// The most connections endpoint `endpoint` ever had open at once.
    pub fn most_open(&self, endpoint: usize) -> usize {
        self.lock().most_open.get(&endpoint).copied().unwrap_or(0)
    }

    /// The most connections open across all endpoints at once since the
    /// last reset.
    pub fn most_open_in_all(&self) -> usize {
        self.lock().most_open_in_all
    }

    /// Starts counting [`Silent::most_open_in_all`] from what is open now.
    pub fn reset_most_open_in_all(&self) {
        let mut state = self.lock();
        state.most_open_in_all = state.open.values().sum();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Holds one connection: reads the request's head, records it, then reads
/// (and drops) whatever comes until the sender closes.
async fn hang(endpoint: usize, mut stream: TcpStream, state: Arc<Mutex<State>>) {
    let lock = || state.lock().unwrap_or_else(PoisonError::into_inner);
    {
        let mut state = lock();
        let open = state.open.entry(endpoint).or_default();
        *open += 1;
        let now = *open;
        let most = state.most_open.entry(endpoint).or_default();
        *most = (*most).max(now);
        let in_all = state.open.values().sum();
        state.most_open_in_all = state.most_open_in_all.max(in_all);
    }
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    let mut recorded = false;
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                if recorded {
                    continue;
                }
                head.extend_from_slice(&buffer[..read]);
                if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    let text = String::from_utf8_lossy(&head[..end]);
                    let webhook_id = text
                        .lines()
                        .find_map(|line| {
                            let (name, value) = line.split_once(':')?;
                            name.eq_ignore_ascii_case("webhook-id").then(|| value.trim().to_owned())
                        })
                        .unwrap_or_default();
                    lock().requests.push(Hung {
                        endpoint,
                        at: Instant::now(),
                        webhook_id,
                    });
                    recorded = true;
                }
            }
        }
    }
    if let Some(open) = lock().open.get_mut(&endpoint) {
        *open = open.saturating_sub(1);
    }
}
