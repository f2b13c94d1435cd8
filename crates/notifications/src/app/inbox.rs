//! The in-app inbox: a page of a user's entries, marking them read, and the
//! live stream of what arrives (what came after a cursor first, then each
//! new entry as it commits).

use std::time::Duration;

use diesel_async::AsyncConnection as _;
use keel_platform::Error;
use tokio::sync::{
    broadcast::{self, error::RecvError},
    mpsc,
};
use uuid::Uuid;

use super::{Notifications, Page};
use crate::{
    live::Wake,
    store::inbox::{self, NotificationRow},
};

/// How many entries a stream reads from the database at once.
const STREAM_READ: i64 = 100;

/// A page of a user's inbox, and how many of their entries are unread.
#[derive(Debug, Clone)]
pub struct InboxPage {
    /// The entries, newest first; the cursor is the last one's sequence
    /// number.
    pub notifications: Page<NotificationRow, i64>,
    /// How many of the user's entries are unread.
    pub unread_count: i64,
}

/// What marking entries read left.
#[derive(Debug, Clone)]
pub struct MarkedRead {
    /// The entries named by id, as they are now, in the order named.
    pub notifications: Vec<NotificationRow>,
    /// How many of the user's entries are unread.
    pub unread_count: i64,
}

/// Why a stream ends on its own; a client that goes away ends it silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The client reads slower than entries arrive: its buffer stayed full
    /// for the stall time. `last_id` is the last entry queued for it (when
    /// it could be read), so the client resumes from there.
    Behind {
        /// The last entry queued for the client.
        last_id: Option<Uuid>,
    },
    /// The server is stopping.
    Stopping,
    /// The inbox could not be read.
    Unreadable,
}

/// One message of a stream: an entry, or, last, why the stream ended.
pub type StreamItem = Result<NotificationRow, StreamEnd>;

impl Notifications {
    /// A page of at most `limit` of the user's entries, newest first, below
    /// sequence `before`; only the unread ones if `unread_only`.
    pub async fn inbox(
        &self,
        user_id: Uuid,
        before: Option<i64>,
        unread_only: bool,
        limit: i64,
    ) -> Result<InboxPage, Error> {
        let mut conn = self.pool.get().await?;
        let rows = inbox::page(&mut conn, user_id, before, unread_only, limit + 1).await?;
        let notifications = Page::of(rows, limit, |row| row.seq);
        Ok(InboxPage {
            notifications,
            unread_count: inbox::unread_count(&mut conn, user_id).await?,
        })
    }

    /// Marks the user's entries read: every one up to entry `up_to`, and
    /// those of `ids`. Either, both or neither: both marks the older ones
    /// and the named ones; neither changes nothing and only reports the
    /// unread count. An unknown id is NOT_FOUND, another user's entry
    /// PERMISSION_DENIED.
    pub async fn mark_read(&self, user_id: Uuid, ids: &[Uuid], up_to: Option<Uuid>) -> Result<MarkedRead, Error> {
        let mut conn = self.pool.get().await?;
        let notifications = conn
            .transaction::<_, Error, _>(async |conn| {
                inbox::lock_inbox(conn, user_id).await?;
                if let Some(up_to) = up_to {
                    let row = inbox::find(conn, up_to).await?;
                    let row = owned(row, user_id)?;
                    inbox::mark_read_up_to(conn, user_id, row.seq).await?;
                }
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                // Locked, so a concurrent mark waits and then finds them read.
                let found = inbox::lock(conn, ids).await?;
                for id in ids {
                    owned(found.iter().find(|row| row.id == *id).cloned(), user_id)?;
                }
                let rows = inbox::mark_read(conn, user_id, ids).await?;
                Ok(ids
                    .iter()
                    .filter_map(|id| rows.iter().find(|row| row.id == *id).cloned())
                    .collect())
            })
            .await?;
        Ok(MarkedRead {
            notifications,
            unread_count: inbox::unread_count(&mut conn, user_id).await?,
        })
    }

    /// Opens the user's stream: what came after entry `after` (after their
    /// newest when `None`) first, then each new entry, oldest first, each
    /// once. It ends with a [`StreamEnd`] when the client falls behind, the
    /// inbox can't be read or the server stops, and silently when the
    /// client goes away.
    pub async fn stream(&self, user_id: Uuid, after: Option<Uuid>) -> Result<mpsc::Receiver<StreamItem>, Error> {
        // Subscribed before the first read: an entry committed after it wakes us.
        let wakes = self.hub.subscribe();
        let mut conn = self.pool.get().await?;
        let after = match after {
            None => inbox::last_seq(&mut conn, user_id).await?,
            Some(id) => owned(inbox::find(&mut conn, id).await?, user_id)?.seq,
        };
        drop(conn);
        // One slot more than the buffer, kept for the message that ends a
        // stream (see `offer`).
        let (replies, stream) = mpsc::channel(self.stream_buffer + 1);
        tokio::spawn(feed(self.clone(), user_id, after, wakes, replies));
        Ok(stream)
    }
}

/// The row, if it is the user's: an unknown id is NOT_FOUND, another
/// user's PERMISSION_DENIED (as the contract says).
fn owned(row: Option<NotificationRow>, user_id: Uuid) -> Result<NotificationRow, Error> {
    match row {
        None => Err(Error::not_found("notification")),
        Some(row) if row.user_id != user_id => Err(Error::permission_denied(
            "NOT_YOUR_NOTIFICATION",
            "that notification is another user's",
        )),
        Some(row) => Ok(row),
    }
}

/// Sends the user's entries after `after` as they commit, until the client
/// goes away, falls behind, or the server stops.
async fn feed(
    service: Notifications,
    user_id: Uuid,
    mut after: i64,
    mut wakes: broadcast::Receiver<Wake>,
    replies: mpsc::Sender<StreamItem>,
) {
    loop {
        match read_after(&service, user_id, after).await {
            Ok(rows) => {
                let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= STREAM_READ;
                for row in rows {
                    let seq = row.seq;
                    match offer(&service, &replies, row).await {
                        Offered::Taken => after = seq,
                        Offered::Closed => return,
                        Offered::Behind => {
                            let last_id = behind(after, &service, user_id).await;
                            let _ = replies.try_send(Err(StreamEnd::Behind { last_id }));
                            return;
                        }
                        Offered::Stopping => {
                            let _ = replies.try_send(Err(StreamEnd::Stopping));
                            return;
                        }
                    }
                }
                if full {
                    continue;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, %user_id, "a notification stream could not read the inbox");
                let _ = replies.try_send(Err(StreamEnd::Unreadable));
                return;
            }
        }
        // Wait for something new for this user.
        loop {
            tokio::select! {
                wake = wakes.recv() => match wake {
                    Ok(wake) if wake.concerns(user_id) => break,
                    Ok(_) => {}
                    // Missed wakes: look anyway.
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                },
                () = replies.closed() => return,
                () = service.shutdown.cancelled() => {
                    let _ = replies.try_send(Err(StreamEnd::Stopping));
                    return;
                }
                // A safety net should a NOTIFY never come (it is sent on
                // commit, but a LISTEN connection can be mid-reconnect).
                () = tokio::time::sleep(Duration::from_secs(30)) => break,
            }
        }
    }
}

/// What became of one entry offered to the client.
enum Offered {
    /// Queued for it.
    Taken,
    /// The client went away.
    Closed,
    /// The buffer stayed full for the stall time: the client reads too
    /// slowly.
    Behind,
    /// The server is stopping.
    Stopping,
}

/// Queues `row` once the buffer has room, keeping one slot free for the
/// message that ends the stream.
async fn offer(service: &Notifications, replies: &mpsc::Sender<StreamItem>, row: NotificationRow) -> Offered {
    tokio::select! {
        permits = replies.reserve_many(2) => match permits {
            Ok(mut permits) => {
                if let Some(permit) = permits.next() {
                    permit.send(Ok(row));
                }
                Offered::Taken
            }
            Err(_) => Offered::Closed,
        },
        () = tokio::time::sleep(service.stream_stall) => Offered::Behind,
        () = service.shutdown.cancelled() => Offered::Stopping,
    }
}

async fn read_after(service: &Notifications, user_id: Uuid, after: i64) -> Result<Vec<NotificationRow>, Error> {
    let mut conn = service.pool.get().await?;
    Ok(inbox::after(&mut conn, user_id, after, STREAM_READ).await?)
}

/// The id of the last entry queued for a client that fell behind
/// (`last_seq`), so it resumes from there; `None` when it can't be read.
async fn behind(last_seq: i64, service: &Notifications, user_id: Uuid) -> Option<Uuid> {
    match service.pool.get().await {
        Ok(mut conn) => inbox::after(&mut conn, user_id, last_seq - 1, 1)
            .await
            .ok()
            .and_then(|rows| rows.into_iter().next())
            .filter(|row| row.seq == last_seq)
            .map(|row| row.id),
        Err(_) => None,
    }
}
