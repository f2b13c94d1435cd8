//! The live inbox through the gateway: Server-Sent Events whose `id:` is the
//! cursor and whose reconnect with `Last-Event-ID` misses nothing and repeats
//! nothing, the same over WebSocket, and a client too slow for its buffer
//! told to resume rather than silently losing entries.

use crate::common;

use std::time::Duration;

use common::{Fixture, User, fixture, fixture_with};
use diesel_async::AsyncConnection as _;
use futures::StreamExt as _;
use keel::notifications::v1::{self as pb, notifications_service_client::NotificationsServiceClient};
use keel_notifications::store::inbox::{self, NewNotification};
use keel_testkit::{
    authorized,
    streams::{Sse, close_code, text, websocket},
};
use serde_json::Value;
use tonic_types::StatusExt as _;

fn id_of(json: &str) -> anyhow::Result<String> {
    let value: Value = serde_json::from_str(json)?;
    Ok(value["notification"]["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no id in {json}"))?
        .to_owned())
}

/// Every inbox id of the user, oldest first.
async fn inbox_ids(f: &Fixture, user: &User) -> anyhow::Result<Vec<String>> {
    let mut ids: Vec<String> = f
        .inbox(user, false)
        .await?
        .notifications
        .into_iter()
        .map(|n| n.id)
        .collect();
    ids.reverse();
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_resumes_with_last_event_id_missing_nothing_and_repeating_nothing() -> anyhow::Result<()> {
    let f = fixture().await?;
    let gateway = f.suite.spawn_gateway(&[]).await?;
    let user = f.user().await?;
    f.inbox_of(&user, "user.registered", 1).await?;

    let (head, mut first) = Sse::open(&gateway, "/v1/notifications:stream", Some(&user.token), None).await?;
    assert_eq!(head.status.as_u16(), 200);
    assert_eq!(first.next().await?.and_then(|e| e.retry).as_deref(), Some("2000"));
    let mut seen = Vec::new();
    f.deposit(&user, 100).await?;
    f.deposit(&user, 200).await?;
    for _ in 0..2 {
        let (id, data) = first.data().await?;
        assert_eq!(id, Some(id_of(&data)?), "id: is the notification id");
        let entry: Value = serde_json::from_str(&data)?;
        assert_eq!(entry["notification"]["eventType"], "balance.changed");
        seen.push(id_of(&data)?);
    }
    drop(first);

    // Missed while away.
    f.deposit(&user, 300).await?;
    f.inbox_of(&user, "balance.changed", 3).await?;
    let (_, mut second) = Sse::open(
        &gateway,
        "/v1/notifications:stream",
        Some(&user.token),
        seen.last().map(String::as_str),
    )
    .await?;
    second.next().await?;
    seen.push(id_of(&second.data().await?.1)?);
    f.deposit(&user, 400).await?;
    seen.push(id_of(&second.data().await?.1)?);

    let all = inbox_ids(&f, &user).await?;
    assert_eq!(seen, all[1..], "every balance change once, in order");
    // Nothing more.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), second.data())
            .await
            .is_err()
    );

    let (head, _) = Sse::open(&gateway, "/v1/notifications:stream", None, None).await?;
    assert_eq!(head.status.as_u16(), 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_route_upgrades_to_websocket_carrying_the_same_json() -> anyhow::Result<()> {
    let f = fixture().await?;
    let gateway = f.suite.spawn_gateway(&[]).await?;
    let user = f.user().await?;
    let welcome = f.inbox_of(&user, "user.registered", 1).await?;
    f.deposit(&user, 100).await?;
    f.inbox_of(&user, "balance.changed", 1).await?;

    let path = format!("/v1/notifications:stream?afterNotificationId={}", welcome[0].id);
    let bearer = [("authorization", format!("Bearer {}", user.token))];
    let (mut socket, response) = websocket(&gateway, &path, &bearer).await?;
    assert_eq!(response.status().as_u16(), 101);
    let (_, mut sse) = Sse::open(&gateway, &path, Some(&user.token), None).await?;
    sse.next().await?;

    // The replay, then a live one: each frame is the event's data.
    assert_eq!(text(&mut socket).await?, sse.data().await?.1);
    f.deposit(&user, 200).await?;
    let frame = text(&mut socket).await?;
    assert_eq!(frame, sse.data().await?.1);
    let entry: Value = serde_json::from_str(&frame)?;
    assert_eq!(entry["notification"]["userId"], user.id);

    // Without a token the handshake is refused.
    assert!(websocket(&gateway, &path, &[]).await.is_err());

    // The gateway stopping closes it with 1001 (going away).
    let stopping = tokio::spawn(gateway.stop());
    assert_eq!(u16::from(close_code(&mut socket).await?), 1001);
    stopping.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_that_falls_behind_is_told_to_resume_from_its_cursor() -> anyhow::Result<()> {
    let f = fixture_with(&["--stream-buffer", "4", "--stream-stall-ms", "500"]).await?;
    let user = f.user().await?;
    let user_id = uuid::Uuid::parse_str(&user.id)?;
    let mut stream = NotificationsServiceClient::new(f.suite.channel("notifications"))
        .stream_notifications(authorized(pb::StreamNotificationsRequest::default(), &user.token))
        .await?
        .into_inner();
    // Far more than the buffer and the transport's windows hold, while the
    // client reads nothing.
    let mut conn = diesel_async::AsyncPgConnection::establish(f.suite.database_url("notifications")).await?;
    let body = "x".repeat(16_000);
    for _ in 0..600 {
        inbox::append(
            &mut conn,
            &NewNotification {
                user_id,
                event_type: "balance.changed",
                event_id: uuid::Uuid::now_v7(),
                title: "Filler",
                body: &body,
            },
        )
        .await?;
    }
    // Longer than the stall time with the buffer full.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut received = Vec::new();
    let status = loop {
        match tokio::time::timeout(common::PATIENCE, stream.next()).await? {
            Some(Ok(item)) => received.push(item.notification.unwrap_or_default().id),
            Some(Err(status)) => break status,
            None => anyhow::bail!("the stream ended without an error after {}", received.len()),
        }
    };
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "STREAM_BEHIND");
    assert_eq!(
        info.metadata.get("after_notification_id"),
        received.last(),
        "it names the last entry the client got"
    );
    assert!(received.len() < 600);

    // Resuming from there gets the rest, each once.
    let mut resumed = NotificationsServiceClient::new(f.suite.channel("notifications"))
        .stream_notifications(authorized(
            pb::StreamNotificationsRequest {
                after_notification_id: received.last().cloned().unwrap_or_default(),
            },
            &user.token,
        ))
        .await?
        .into_inner();
    while received.len() < 600 {
        let item = tokio::time::timeout(common::PATIENCE, resumed.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("ended"))??;
        received.push(item.notification.unwrap_or_default().id);
    }
    let mut unique = received.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 600, "no entry lost or repeated");
    Ok(())
}
