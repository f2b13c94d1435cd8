//! New inbox entries, live: one LISTEN connection per process hears every
//! replica's NOTIFY and wakes the streams of that user. A wake only says
//! "look": streams read what is new from the database, so a lost or
//! repeated wake can't lose or repeat an entry.

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store::inbox::NOTIFY_CHANNEL;

/// What a stream is woken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The user has something new.
    User(Uuid),
    /// Anyone may have: the LISTEN connection was (re)made, so NOTIFYs
    /// sent meanwhile were lost.
    Everyone,
}

impl Wake {
    /// Whether a stream of `user_id` should look.
    pub fn concerns(self, user_id: Uuid) -> bool {
        match self {
            Wake::User(user) => user == user_id,
            Wake::Everyone => true,
        }
    }
}

/// The wakes of this process's streams.
#[derive(Debug, Clone)]
pub struct Hub {
    wakes: broadcast::Sender<Wake>,
}

impl Hub {
    /// A hub fed by NOTIFYs in the database at `url` until `shutdown`.
    pub fn start(url: String, shutdown: CancellationToken) -> Self {
        // A stream that misses wakes (it lagged) looks anyway, so the size
        // only bounds memory.
        let (wakes, _) = broadcast::channel(1024);
        let sender = wakes.clone();
        tokio::spawn(keel_platform::db::listen_with(
            url,
            NOTIFY_CHANNEL,
            move |payload| {
                let wake = match payload {
                    None => Wake::Everyone,
                    Some(user) => Uuid::parse_str(user).map_or(Wake::Everyone, Wake::User),
                };
                // No stream open: nobody to wake.
                let _ = sender.send(wake);
            },
            shutdown,
        ));
        Self { wakes }
    }

    /// Wakes for a new stream; subscribe before reading what is there, so
    /// nothing committed after the read goes unnoticed.
    pub fn subscribe(&self) -> broadcast::Receiver<Wake> {
        self.wakes.subscribe()
    }
}
