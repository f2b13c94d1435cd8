//! The in-app inbox: listing with an unread count, marking read (some ids or
//! everything up to one) under concurrency, and a stream that replays after
//! a cursor then goes live, across replicas, with no gap and no duplicate.

use crate::common;

use std::time::Duration;

use common::{Fixture, User, fixture};
use futures::StreamExt as _;
use keel::notifications::v1::{self as pb, notifications_service_client::NotificationsServiceClient};
use keel_testkit::authorized;
use tonic::Code;

async fn mark(f: &Fixture, user: &User, ids: &[&str], up_to: &str) -> Result<pb::MarkReadResponse, tonic::Status> {
    Ok(f.notifications()
        .mark_read(authorized(
            pb::MarkReadRequest {
                notification_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
                up_to_notification_id: up_to.into(),
            },
            &user.token,
        ))
        .await?
        .into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_inbox_lists_newest_first_and_counts_what_is_unread() -> anyhow::Result<()> {
    let f = fixture().await?;
    let user = f.user().await?;
    // Welcome, then three balance changes.
    f.inbox_of(&user, "user.registered", 1).await?;
    for amount in [100, 200, 300] {
        f.deposit(&user, amount).await?;
    }
    let entries = f.inbox_of(&user, "balance.changed", 3).await?;
    let inbox = f.inbox(&user, false).await?;
    assert_eq!(inbox.notifications.len(), 4);
    assert_eq!(inbox.unread_count, 4);
    assert_eq!(inbox.notifications[3].event_type, "user.registered", "newest first");
    assert!(entries[0].body.contains("3.00"), "{}", entries[0].body);
    assert!(inbox.notifications.iter().all(|n| n.user_id == user.id && !n.read));

    // Pages of one, newest first, end with an empty token.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = f
            .notifications()
            .list_notifications(authorized(
                pb::ListNotificationsRequest {
                    page_size: 1,
                    page_token: token.clone(),
                    unread_only: false,
                },
                &user.token,
            ))
            .await?
            .into_inner();
        seen.extend(page.notifications.into_iter().map(|n| n.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let all: Vec<_> = inbox.notifications.iter().map(|n| n.id.clone()).collect();
    assert_eq!(seen, all);

    // Mark two read: the count drops, the unread filter hides them.
    let marked = mark(&f, &user, &[&all[0], &all[1]], "").await?;
    assert_eq!(marked.unread_count, 2);
    assert!(marked.notifications.iter().all(|n| n.read && n.read_time.is_some()));
    let unread = f.inbox(&user, true).await?;
    assert_eq!(unread.notifications.len(), 2);
    assert_eq!(unread.unread_count, 2);
    // Again: harmless.
    assert_eq!(mark(&f, &user, &[&all[0]], "").await?.unread_count, 2);
    // Everything up to the newest.
    assert_eq!(mark(&f, &user, &[], &all[0]).await?.unread_count, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn marking_read_is_all_or_nothing_and_refuses_what_is_not_yours() -> anyhow::Result<()> {
    let f = fixture().await?;
    let (alice, bob) = (f.user().await?, f.user().await?);
    let alices = f.inbox_of(&alice, "user.registered", 1).await?;
    let bobs = f.inbox_of(&bob, "user.registered", 1).await?;

    let denied = mark(&f, &alice, &[&alices[0].id, &bobs[0].id], "")
        .await
        .expect_err("bob's");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let unknown = uuid::Uuid::now_v7().to_string();
    let missing = mark(&f, &alice, &[&alices[0].id, &unknown], "")
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(f.inbox(&alice, true).await?.unread_count, 1, "nothing changed");

    for (ids, up_to) in [(vec!["x"], ""), (vec![], "x")] {
        let bad = mark(&f, &alice, &ids, up_to).await.expect_err("invalid");
        assert_eq!(bad.code(), Code::InvalidArgument, "{ids:?} {up_to}");
    }
    // Neither changes nothing and tells the unread count.
    let neither = mark(&f, &alice, &[], "").await?;
    assert!(neither.notifications.is_empty());
    assert_eq!(neither.unread_count, 1);
    let too_many: Vec<String> = (0..101).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
    assert_eq!(
        mark(&f, &alice, &refs, "").await.expect_err("101").code(),
        Code::InvalidArgument
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_unread_count_stays_right_under_concurrent_marks() -> anyhow::Result<()> {
    let f = fixture().await?;
    let user = f.user().await?;
    for amount in 1..=10 {
        f.deposit(&user, amount).await?;
    }
    let entries = f.inbox_of(&user, "balance.changed", 10).await?;
    let ids: Vec<String> = entries.iter().map(|n| n.id.clone()).collect();
    // Twenty calls at once, overlapping: each id is named by four of them.
    let calls = (0..20).map(|i| {
        let chosen: Vec<&str> = ids.iter().skip(i % 5).step_by(2).map(String::as_str).collect();
        let (f, user) = (&f, &user);
        async move { mark(f, user, &chosen, "").await }
    });
    for outcome in futures::future::join_all(calls).await {
        outcome?;
    }
    let inbox = f.inbox(&user, false).await?;
    let unread = inbox.notifications.iter().filter(|n| !n.read).count();
    assert_eq!(inbox.unread_count, unread as i64);
    assert_eq!(unread, 1, "only the welcome was never named");
    Ok(())
}

/// Opens the user's stream on `channel` after `cursor`.
async fn open(
    channel: tonic::transport::Channel,
    user: &User,
    cursor: &str,
) -> anyhow::Result<tonic::Streaming<pb::StreamNotificationsResponse>> {
    Ok(NotificationsServiceClient::new(channel)
        .stream_notifications(authorized(
            pb::StreamNotificationsRequest {
                after_notification_id: cursor.into(),
            },
            &user.token,
        ))
        .await?
        .into_inner())
}

async fn next(stream: &mut tonic::Streaming<pb::StreamNotificationsResponse>) -> anyhow::Result<pb::Notification> {
    let item = tokio::time::timeout(common::PATIENCE, stream.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the stream ended"))??;
    item.notification.ok_or_else(|| anyhow::anyhow!("an empty message"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_replays_after_its_cursor_then_goes_live_without_gap_or_duplicate() -> anyhow::Result<()> {
    let f = fixture().await?;
    let user = f.user().await?;
    let welcome = f.inbox_of(&user, "user.registered", 1).await?;
    for amount in [1, 2] {
        f.deposit(&user, amount).await?;
    }
    let replayed = f.inbox_of(&user, "balance.changed", 2).await?;

    let mut stream = open(f.suite.channel("notifications"), &user, &welcome[0].id).await?;
    // Deposits race the join: each must come once, in order.
    let racing = async {
        for amount in [3, 4, 5] {
            f.deposit(&user, amount).await?;
        }
        anyhow::Ok(())
    };
    let (raced, received) = tokio::join!(racing, async {
        let mut received = Vec::new();
        for _ in 0..5 {
            received.push(next(&mut stream).await?);
        }
        anyhow::Ok(received)
    });
    raced?;
    let received = received?;
    assert_eq!(received[0].id, replayed[1].id, "oldest first");
    assert_eq!(received[1].id, replayed[0].id);
    let mut ids: Vec<_> = received.iter().map(|n| n.id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 5, "no duplicate");
    // Nothing more is waiting.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next())
            .await
            .is_err()
    );

    // Another user's cursor is refused.
    let other = f.user().await?;
    let denied = open(f.suite.channel("notifications"), &other, &welcome[0].id)
        .await
        .expect_err("not theirs");
    assert!(denied.to_string().contains("PermissionDenied") || denied.to_string().contains("another user"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notification_written_by_one_replica_reaches_a_stream_held_on_another() -> anyhow::Result<()> {
    let f = fixture().await?;
    let replica = f.suite.spawn_replica("notifications").await?;
    let user = f.user().await?;
    f.inbox_of(&user, "user.registered", 1).await?;
    // Held on the replica; the relay delivers to the suite's instance.
    let mut stream = open(replica.channel.clone(), &user, "").await?;
    f.deposit(&user, 42).await?;
    let live = next(&mut stream).await?;
    assert_eq!(live.event_type, "balance.changed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_ends_with_unavailable_when_the_server_stops() -> anyhow::Result<()> {
    let f = fixture().await?;
    let replica = f.suite.spawn_replica("notifications").await?;
    let user = f.user().await?;
    let mut stream = open(replica.channel.clone(), &user, "").await?;
    let stopping = tokio::spawn(replica.stop());
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.next()).await?;
    // Within the grace period.
    tokio::time::timeout(Duration::from_secs(10), stopping).await???;
    match ended {
        Some(Err(status)) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        other => panic!("the stream should end with UNAVAILABLE, not {other:?}"),
    }
    Ok(())
}
