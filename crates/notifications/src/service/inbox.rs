//! ListNotifications, MarkRead and StreamNotifications: the in-app inbox.

use std::time::Duration;

use diesel_async::AsyncConnection as _;
use keel::notifications::v1 as pb;
use keel_platform::{Error, db::paging, proto::timestamp, serve::rpc::parse_id};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;

use super::Notifications;
use crate::store::inbox::{self, NotificationRow};

/// The most ids one MarkRead may name.
const MAX_MARK_READ: usize = 100;

/// How many entries a stream reads from the database at once.
const STREAM_READ: i64 = 100;

pub(super) async fn list_notifications(
    service: &Notifications,
    user_id: Uuid,
    request: pb::ListNotificationsRequest,
) -> Result<pb::ListNotificationsResponse, Error> {
    let limit = paging::page_size(request.page_size)?;
    let before = paging::decode_position(&request.page_token)?;
    let mut conn = service.pool.get().await?;
    let rows = inbox::page(&mut conn, user_id, before, request.unread_only, limit + 1).await?;
    let (rows, next_page_token) = paging::page(rows, limit, |row| paging::encode_position(row.seq));
    Ok(pb::ListNotificationsResponse {
        notifications: rows.into_iter().map(to_proto).collect(),
        next_page_token,
        unread_count: inbox::unread_count(&mut conn, user_id).await?,
    })
}

pub(super) async fn mark_read(
    service: &Notifications,
    user_id: Uuid,
    request: pb::MarkReadRequest,
) -> Result<pb::MarkReadResponse, Error> {
    // Either, both or neither: both marks the older ones and the named
    // ones; neither changes nothing and only reports the unread count.
    if request.notification_ids.len() > MAX_MARK_READ {
        return Err(Error::invalid_field("notification_ids", "at most 100 ids"));
    }
    let ids = request
        .notification_ids
        .iter()
        .enumerate()
        .map(|(i, id)| parse_id(&format!("notification_ids[{i}]"), id))
        .collect::<Result<Vec<_>, _>>()?;
    let up_to = request.up_to_notification_id.as_str();
    let up_to = if up_to.is_empty() {
        None
    } else {
        Some(parse_id("up_to_notification_id", up_to)?)
    };
    let mut conn = service.pool.get().await?;
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
            let found = inbox::lock(conn, &ids).await?;
            for id in &ids {
                owned(found.iter().find(|row| row.id == *id).cloned(), user_id)?;
            }
            let rows = inbox::mark_read(conn, user_id, &ids).await?;
            Ok(ids
                .iter()
                .filter_map(|id| rows.iter().find(|row| row.id == *id).cloned())
                .map(to_proto)
                .collect())
        })
        .await?;
    Ok(pb::MarkReadResponse {
        notifications,
        unread_count: inbox::unread_count(&mut conn, user_id).await?,
    })
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

/// The replies of one stream.
pub type NotificationStream = ReceiverStream<Result<pb::StreamNotificationsResponse, Status>>;

/// Opens the user's stream: what came after `after_notification_id` first,
/// then each new entry, oldest first, each once.
pub(super) async fn stream_notifications(
    service: &Notifications,
    user_id: Uuid,
    request: pb::StreamNotificationsRequest,
) -> Result<NotificationStream, Error> {
    // Subscribed before the first read: an entry committed after it wakes us.
    let wakes = service.hub.subscribe();
    let mut conn = service.pool.get().await?;
    let after = if request.after_notification_id.is_empty() {
        inbox::last_seq(&mut conn, user_id).await?
    } else {
        let id = parse_id("after_notification_id", &request.after_notification_id)?;
        owned(inbox::find(&mut conn, id).await?, user_id)?.seq
    };
    drop(conn);
    // One slot more than the buffer, kept for the message that ends a
    // stream (see `offer`).
    let (replies, stream) = mpsc::channel(service.stream_buffer + 1);
    tokio::spawn(feed(service.clone(), user_id, after, wakes, replies));
    Ok(ReceiverStream::new(stream))
}

/// Sends the user's entries after `after` as they commit, until the client
/// goes away, falls behind, or the server stops.
async fn feed(
    service: Notifications,
    user_id: Uuid,
    mut after: i64,
    mut wakes: tokio::sync::broadcast::Receiver<crate::live::Wake>,
    replies: mpsc::Sender<Result<pb::StreamNotificationsResponse, Status>>,
) {
    loop {
        match read_after(&service, user_id, after).await {
            Ok(rows) => {
                let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= STREAM_READ;
                for row in rows {
                    let reply = pb::StreamNotificationsResponse {
                        notification: Some(to_proto(row.clone())),
                    };
                    match offer(&service, &replies, reply).await {
                        Offered::Taken => after = row.seq,
                        Offered::Closed => return,
                        Offered::Behind => {
                            let _ = replies.try_send(Err(behind(after, &service, user_id).await));
                            return;
                        }
                        Offered::Stopping => {
                            let _ = replies.try_send(Err(stopping()));
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
                let _ = replies.try_send(Err(Status::unavailable(
                    "the inbox could not be read; reconnect with after_notification_id",
                )));
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
                    let _ = replies.try_send(Err(stopping()));
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

/// Queues `reply` once the buffer has room, keeping one slot free for the
/// message that ends the stream.
async fn offer(
    service: &Notifications,
    replies: &mpsc::Sender<Result<pb::StreamNotificationsResponse, Status>>,
    reply: pb::StreamNotificationsResponse,
) -> Offered {
    tokio::select! {
        permits = replies.reserve_many(2) => match permits {
            Ok(mut permits) => {
                if let Some(permit) = permits.next() {
                    permit.send(Ok(reply));
                }
                Offered::Taken
            }
            Err(_) => Offered::Closed,
        },
        () = tokio::time::sleep(service.stream_stall) => Offered::Behind,
        () = service.shutdown.cancelled() => Offered::Stopping,
    }
}

fn stopping() -> Status {
    Status::unavailable("the server is shutting down; reconnect with after_notification_id")
}

async fn read_after(service: &Notifications, user_id: Uuid, after: i64) -> Result<Vec<NotificationRow>, Error> {
    let mut conn = service.pool.get().await?;
    Ok(inbox::after(&mut conn, user_id, after, STREAM_READ).await?)
}

/// ABORTED, STREAM_BEHIND: the client reads slower than entries arrive. It
/// names the last entry queued for the client (`last_seq`), so the client
/// resumes from there.
async fn behind(last_seq: i64, service: &Notifications, user_id: Uuid) -> Status {
    let last_id = match service.pool.get().await {
        Ok(mut conn) => inbox::after(&mut conn, user_id, last_seq - 1, 1)
            .await
            .ok()
            .and_then(|rows| rows.into_iter().next())
            .filter(|row| row.seq == last_seq)
            .map(|row| row.id.to_string()),
        Err(_) => None,
    };
    let mut error = Error::aborted(
        "STREAM_BEHIND",
        "the stream fell behind its reader; reconnect with after_notification_id set to the last id received",
    );
    if let Some(id) = last_id {
        error = error.with_metadata("after_notification_id", id);
    }
    error.into()
}

/// The proto form of an entry.
pub(crate) fn to_proto(row: NotificationRow) -> pb::Notification {
    pb::Notification {
        id: row.id.to_string(),
        user_id: row.user_id.to_string(),
        event_type: row.event_type,
        event_id: row.event_id.to_string(),
        title: row.title,
        body: row.body,
        read: row.read_time.is_some(),
        read_time: row.read_time.map(timestamp),
        create_time: Some(timestamp(row.create_time)),
    }
}
