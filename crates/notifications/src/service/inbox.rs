//! ListNotifications, MarkRead and StreamNotifications: the in-app inbox.

use futures::{StreamExt as _, stream::BoxStream};
use keel::notifications::v1 as pb;
use keel_platform::{
    Error,
    auth::lifetime::{Verified, until_lapsed},
    db::paging,
    proto::timestamp,
    serve::rpc::parse_id,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;

use super::Notifications;
use crate::{
    app::{StreamEnd, StreamItem},
    store::inbox::NotificationRow,
};

/// The most ids one MarkRead may name.
const MAX_MARK_READ: usize = 100;

pub(super) async fn list_notifications(
    service: &Notifications,
    user_id: Uuid,
    request: pb::ListNotificationsRequest,
) -> Result<pb::ListNotificationsResponse, Error> {
    let limit = paging::page_size(request.page_size)?;
    let before = paging::decode_position(&request.page_token)?;
    let inbox = service.inbox(user_id, before, request.unread_only, limit).await?;
    let page = inbox.notifications;
    Ok(pb::ListNotificationsResponse {
        notifications: page.rows.into_iter().map(to_proto).collect(),
        next_page_token: page.next.map(paging::encode_position).unwrap_or_default(),
        unread_count: inbox.unread_count,
    })
}

pub(super) async fn mark_read(
    service: &Notifications,
    user_id: Uuid,
    request: pb::MarkReadRequest,
) -> Result<pb::MarkReadResponse, Error> {
    if request.notification_ids.len() > MAX_MARK_READ {
        return Err(Error::invalid_field(
            "notification_ids",
            "repeated.max_items",
            "must have at most 100 items",
        ));
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
    let marked = service.mark_read(user_id, &ids, up_to).await?;
    Ok(pb::MarkReadResponse {
        notifications: marked.notifications.into_iter().map(to_proto).collect(),
        unread_count: marked.unread_count,
    })
}

/// The replies of one stream.
pub type NotificationStream = BoxStream<'static, Result<pb::StreamNotificationsResponse, Status>>;

/// Opens the user's stream: what came after `after_notification_id` first,
/// then each new entry, oldest first, each once. It ends with
/// UNAUTHENTICATED when the caller's `token` expires or is revoked.
pub(super) async fn stream_notifications(
    service: &Notifications,
    user_id: Uuid,
    token: Verified,
    request: pb::StreamNotificationsRequest,
) -> Result<NotificationStream, Error> {
    let after = if request.after_notification_id.is_empty() {
        None
    } else {
        Some(parse_id("after_notification_id", &request.after_notification_id)?)
    };
    let stream = service.stream(user_id, after).await?;
    Ok(until_lapsed(ReceiverStream::new(stream).map(reply), token).boxed())
}

/// One message of a stream as the client gets it.
fn reply(item: StreamItem) -> Result<pb::StreamNotificationsResponse, Status> {
    match item {
        Ok(row) => Ok(pb::StreamNotificationsResponse {
            notification: Some(to_proto(row)),
        }),
        Err(end) => Err(ended(end)),
    }
}

/// The status a stream ends with.
fn ended(end: StreamEnd) -> Status {
    match end {
        // ABORTED, STREAM_BEHIND: the client reads slower than entries
        // arrive. It names the last entry queued for the client, so the
        // client resumes from there.
        StreamEnd::Behind { last_id } => {
            let mut error = Error::aborted(
                "STREAM_BEHIND",
                "the stream fell behind its reader; reconnect with after_notification_id set to the last id received",
            );
            if let Some(id) = last_id {
                error = error.with_metadata("after_notification_id", id.to_string());
            }
            error.into()
        }
        StreamEnd::Stopping => Status::unavailable("the server is shutting down; reconnect with after_notification_id"),
        StreamEnd::Unreadable => {
            Status::unavailable("the inbox could not be read; reconnect with after_notification_id")
        }
    }
}

/// The proto form of an entry.
fn to_proto(row: NotificationRow) -> pb::Notification {
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
