//! Live streams that no single client can starve, and that end with their
//! token: the gateway's per-client cap, its own upstream connections for
//! streams, and streams ended (at the gateway and in the service) when the
//! token is revoked or expires.

use crate::common;

use std::time::Duration;

use common::{Fixture, User, eventually, fixture};
use futures::StreamExt as _;
use keel::{auth::v1 as auth_pb, notifications::v1 as pb};
use keel_testkit::{
    SuiteOptions, authorized,
    http::TestGateway,
    streams::{Sse, close_code, text, websocket},
};
use serde_json::Value;
use tonic_types::StatusExt as _;

/// How long a revoked token's stream may live on: the revocation reaches
/// the gateway and the service over auth's feed, then the stream ends.
const REVOKED_WITHIN: Duration = Duration::from_secs(2);

/// Signs `user` in again: a new session, with its refresh token.
async fn session(f: &Fixture, user: &User) -> anyhow::Result<auth_pb::TokenPair> {
    let login = f.suite.login(&user.email, "a perfectly fine password").await?;
    login.tokens.ok_or_else(|| anyhow::anyhow!("no tokens"))
}

/// Ends the session `tokens` belong to.
async fn logout(f: &Fixture, tokens: &auth_pb::TokenPair) -> anyhow::Result<()> {
    f.suite
        .auth()
        .logout(auth_pb::LogoutRequest {
            refresh_token: tokens.refresh_token.clone(),
        })
        .await?;
    Ok(())
}

/// The other user's inbox, marking and stream all answer at once.
async fn served_normally(f: &Fixture, gateway: &TestGateway, other: &User) -> anyhow::Result<()> {
    let http = gateway.http();
    let started = std::time::Instant::now();
    let list = http.get("/v1/notifications", Some(&other.token)).await?;
    assert_eq!(list.status.as_u16(), 200, "{:?}", list.json());
    let unread = list.json()["notifications"].as_array().cloned().unwrap_or_default();
    let id = unread
        .first()
        .and_then(|n| n["id"].as_str())
        .ok_or_else(|| anyhow::anyhow!("the other user has an entry"))?;
    let marked = http
        .post(
            "/v1/notifications:markRead",
            Some(&other.token),
            &serde_json::json!({ "notificationIds": [id] }),
        )
        .await?;
    assert_eq!(marked.status.as_u16(), 200, "{:?}", marked.json());
    let (head, mut stream) = Sse::open(gateway, "/v1/notifications:stream", Some(&other.token), None).await?;
    assert_eq!(head.status.as_u16(), 200);
    assert_eq!(stream.next().await?.and_then(|e| e.retry).as_deref(), Some("2000"));
    let ready = http.get("/readyz", None).await?;
    assert_eq!(ready.status.as_u16(), 200, "{:?}", ready.json());
    // Generous for a loaded machine; starved calls took 10 s (the upstream
    // timeout) and /readyz 2 s before.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the other user waited {:?}",
        started.elapsed()
    );
    f.inbox(other, false).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_over_its_stream_cap_gets_429_and_nobody_else_notices() -> anyhow::Result<()> {
    let f = fixture().await?;
    let gateway = f.suite.spawn_gateway(&["--max-streams-per-client", "4"]).await?;
    let (greedy, other) = (f.user().await?, f.user().await?);
    f.inbox_of(&other, "user.registered", 1).await?;

    let mut held = Vec::new();
    for _ in 0..4 {
        let (head, stream) = Sse::open(&gateway, "/v1/notifications:stream", Some(&greedy.token), None).await?;
        assert_eq!(head.status.as_u16(), 200);
        held.push(stream);
    }
    let over = gateway
        .http()
        .get("/v1/notifications:stream", Some(&greedy.token))
        .await?;
    assert_eq!(over.status.as_u16(), 429);
    let body = over.json();
    assert_eq!(body["code"], 8, "RESOURCE_EXHAUSTED: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains("4 open streams")),
        "{body}"
    );
    // A WebSocket counts the same.
    let refused = websocket(
        &gateway,
        "/v1/notifications:stream",
        &[("authorization", format!("Bearer {}", greedy.token))],
    )
    .await;
    assert!(refused.is_err(), "the upgrade is refused over the cap");
    // Another session of the same user is the same client.
    let tokens = session(&f, &greedy).await?;
    let same_user = gateway
        .http()
        .get("/v1/notifications:stream", Some(&tokens.access_token))
        .await?;
    assert_eq!(same_user.status.as_u16(), 429);

    served_normally(&f, &gateway, &other).await?;

    // A stream that ends gives its place back.
    drop(held.pop());
    eventually("a place back", || async {
        let (head, stream) = Sse::open(&gateway, "/v1/notifications:stream", Some(&greedy.token), None).await?;
        Ok((head.status.as_u16() == 200).then_some(stream))
    })
    .await?;

    let metrics = reqwest::get(gateway.metrics_url()).await?.text().await?;
    assert!(
        metrics.contains(r#"keel_gateway_streams_refused_total{route="/v1/notifications:stream",reason="client_cap"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"keel_gateway_open_streams{route="/v1/notifications:stream"}"#),
        "{metrics}"
    );
    drop(held);
    gateway.stop().await?;
    f.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn more_unread_streams_than_one_connection_carries_leave_everyone_else_alone() -> anyhow::Result<()> {
    let f = fixture().await?;
    // No per-client cap and no rate limit: the upstream side alone must hold.
    let gateway = f
        .suite
        .spawn_gateway(&["--max-streams-per-client", "0", "--rate-limit-per-minute", "0"])
        .await?;
    let (greedy, other) = (f.user().await?, f.user().await?);
    f.inbox_of(&other, "user.registered", 1).await?;

    // More than a service takes on one HTTP/2 connection (256), none read.
    let mut held = Vec::new();
    for _ in 0..260 {
        let (head, stream) = Sse::open(&gateway, "/v1/notifications:stream", Some(&greedy.token), None).await?;
        assert_eq!(head.status.as_u16(), 200, "stream {} of 260", held.len() + 1);
        held.push(stream);
    }
    served_normally(&f, &gateway, &other).await?;
    // Entries still reach the greedy user's newest stream, too.
    f.deposit(&greedy, 100).await?;
    let mut last = held.pop().ok_or_else(|| anyhow::anyhow!("streams"))?;
    last.next().await?;
    let (_, data) = last.data().await?;
    let entry: Value = serde_json::from_str(&data)?;
    assert_eq!(entry["notification"]["eventType"], "balance.changed");

    drop(held);
    gateway.stop().await?;
    f.suite.stop().await
}

/// The next event of `stream` is an error UNAUTHENTICATED with `reason`,
/// and then the stream ends.
async fn ends_unauthenticated(stream: &mut Sse, reason: &str) -> anyhow::Result<()> {
    let event = loop {
        let event = stream
            .next()
            .await?
            .ok_or_else(|| anyhow::anyhow!("ended without an error"))?;
        if event.event.is_some() {
            break event;
        }
    };
    assert_eq!(event.event.as_deref(), Some("error"));
    let status: Value = serde_json::from_str(event.data.as_deref().unwrap_or_default())?;
    assert_eq!(status["code"], 16, "UNAUTHENTICATED: {status}");
    assert!(status.to_string().contains(reason), "{status}");
    assert_eq!(stream.next().await?, None, "the stream ends after its error");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_end_within_two_seconds_of_their_token_being_revoked() -> anyhow::Result<()> {
    let f = fixture().await?;
    let gateway = f.suite.spawn_gateway(&[]).await?;
    let user = f.user().await?;

    // Logout: the session's stream ends, over SSE, WebSocket and gRPC.
    let tokens = session(&f, &user).await?;
    let (_, mut sse) = Sse::open(&gateway, "/v1/notifications:stream", Some(&tokens.access_token), None).await?;
    sse.next().await?;
    let (mut socket, _) = websocket(
        &gateway,
        "/v1/notifications:stream",
        &[("authorization", format!("Bearer {}", tokens.access_token))],
    )
    .await?;
    let mut grpc = f
        .notifications()
        .stream_notifications(authorized(
            pb::StreamNotificationsRequest::default(),
            &tokens.access_token,
        ))
        .await?
        .into_inner();
    // The other session's stream lives on.
    let (_, mut unaffected) = Sse::open(&gateway, "/v1/notifications:stream", Some(&user.token), None).await?;
    unaffected.next().await?;

    logout(&f, &tokens).await?;
    let revoked = std::time::Instant::now();
    ends_unauthenticated(&mut sse, "TOKEN_REVOKED").await?;
    assert!(
        revoked.elapsed() < REVOKED_WITHIN,
        "SSE ended after {:?}",
        revoked.elapsed()
    );
    let error: Value = serde_json::from_str(&text(&mut socket).await?)?;
    assert_eq!(error["error"]["code"], 16, "{error}");
    assert_eq!(u16::from(close_code(&mut socket).await?), 1008, "policy violation");
    let status = tokio::time::timeout(REVOKED_WITHIN, grpc.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the gRPC stream ended without a status"))?
        .expect_err("an error");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        status.get_details_error_info().map(|info| info.reason).as_deref(),
        Some("TOKEN_REVOKED")
    );
    assert!(revoked.elapsed() < REVOKED_WITHIN * 2, "{:?}", revoked.elapsed());

    f.deposit(&user, 100).await?;
    assert!(unaffected.data().await?.1.contains("balance.changed"));

    // An admin disabling the user ends every stream of theirs.
    f.suite
        .auth()
        .disable_user(authorized(
            auth_pb::DisableUserRequest {
                user_id: user.id.clone(),
            },
            &f.admin,
        ))
        .await?;
    let disabled = std::time::Instant::now();
    ends_unauthenticated(&mut unaffected, "TOKEN_REVOKED").await?;
    assert!(disabled.elapsed() < REVOKED_WITHIN, "{:?}", disabled.elapsed());

    gateway.stop().await?;
    f.suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_ends_when_its_token_expires() -> anyhow::Result<()> {
    let suite =
        keel_testkit::spawn_suite_with_options(SuiteOptions::default().args("auth", &["--access-token-ttl-secs", "3"]))
            .await?;
    let gateway = suite.spawn_gateway(&[]).await?;
    let email = format!("user-{}@example.com", uuid::Uuid::now_v7().simple());
    suite.register(&email, "a perfectly fine password").await?;
    let login = suite.login(&email, "a perfectly fine password").await?;
    let tokens = login.tokens.ok_or_else(|| anyhow::anyhow!("no tokens"))?;
    let expires = tokens
        .access_token_expire_time
        .as_ref()
        .map(|t| std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.seconds).unwrap_or(0)))
        .ok_or_else(|| anyhow::anyhow!("no expiry"))?;

    let (_, mut sse) = Sse::open(&gateway, "/v1/notifications:stream", Some(&tokens.access_token), None).await?;
    sse.next().await?;
    ends_unauthenticated(&mut sse, "TOKEN_EXPIRED").await?;
    let ended = std::time::SystemTime::now();
    // `exp` has whole seconds; the stream ends at it, not at the verifiers'
    // leeway after it.
    let late = ended.duration_since(expires).unwrap_or_default();
    let early = expires.duration_since(ended).unwrap_or_default();
    assert!(early < Duration::from_secs(1), "ended {early:?} before the expiry");
    assert!(late < Duration::from_secs(2), "ended {late:?} after the expiry");

    gateway.stop().await?;
    suite.stop().await
}
