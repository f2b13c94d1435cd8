//! Server streams that resume, over Server-Sent Events and WebSocket: the
//! gateway's side of it, against a tonic notifications service hosted here
//! that records each call (its cursor, its token, when it is dropped),
//! replays what it holds after `after_notification_id`, then sends what the
//! test pushes. The real service behind the gateway is tested in
//! crates/notifications/tests/gateway.rs.

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{Stream, StreamExt as _};
use http::{HeaderValue, StatusCode};
use keel::notifications::v1::{
    self as pb, Notification, StreamNotificationsResponse,
    notifications_service_server::{NotificationsService, NotificationsServiceServer},
};
use keel_platform::Role;
use keel_testkit::{
    Suite,
    http::TestGateway,
    streams::{Sse, close_code, text, websocket},
};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_tungstenite::tungstenite::{self, protocol::frame::coding::CloseCode};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// How long any one step may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(10);

/// One StreamNotifications call, as the service saw it.
struct Call {
    after: String,
    authorization: Option<String>,
    /// Resolves when the gateway drops the call.
    ended: oneshot::Receiver<()>,
}

type Item = Result<Notification, Status>;

/// The notifications the service holds, and the open calls' live feed.
struct Log {
    held: Vec<Notification>,
    live: broadcast::Sender<Item>,
}

#[derive(Clone)]
struct FakeNotifications {
    log: Arc<Mutex<Log>>,
    calls: mpsc::UnboundedSender<Call>,
}

fn notification(id: &str) -> Notification {
    Notification {
        id: id.into(),
        event_type: "order.paid".into(),
        title: format!("Order paid ({id})"),
        ..Default::default()
    }
}

impl FakeNotifications {
    /// A new notification: held (for later replays) and sent to open calls.
    fn push(&self, id: &str) {
        let mut log = self.log.lock().expect("the log");
        log.held.push(notification(id));
        let _ = log.live.send(Ok(notification(id)));
    }

    /// Ends every open call with `status`.
    fn fail(&self, status: Status) {
        let log = self.log.lock().expect("the log");
        let _ = log.live.send(Err(status));
    }
}

fn unimplemented() -> Status {
    Status::unimplemented("not in this test")
}

// Only StreamNotifications does something here.
#[tonic::async_trait]
impl NotificationsService for FakeNotifications {
    type StreamNotificationsStream = Pin<Box<dyn Stream<Item = Result<StreamNotificationsResponse, Status>> + Send>>;

    async fn stream_notifications(
        &self,
        request: tonic::Request<pb::StreamNotificationsRequest>,
    ) -> Result<tonic::Response<Self::StreamNotificationsStream>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let after = request.into_inner().after_notification_id;
        // The replay and the subscription are taken together, so nothing
        // pushed meanwhile is missed or sent twice.
        let (replay, live) = {
            let log = self.log.lock().expect("the log");
            let replay: Vec<Item> = if after.is_empty() {
                Vec::new()
            } else {
                log.held.iter().filter(|n| n.id > after).cloned().map(Ok).collect()
            };
            (replay, log.live.subscribe())
        };
        let (ended_tx, ended) = oneshot::channel();
        let _ = self.calls.send(Call {
            after,
            authorization,
            ended,
        });
        let live = futures::stream::unfold(live, |mut live| async move {
            loop {
                match live.recv().await {
                    Ok(item) => return Some((item, live)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        let replies = futures::stream::iter(replay).chain(live).map(move |item| {
            // Held by the stream: dropped, it tells the test the call ended.
            let _ended = &ended_tx;
            item.map(|n| StreamNotificationsResponse { notification: Some(n) })
        });
        Ok(tonic::Response::new(Box::pin(replies)))
    }

    async fn list_notifications(
        &self,
        _: tonic::Request<pb::ListNotificationsRequest>,
    ) -> Result<tonic::Response<pb::ListNotificationsResponse>, Status> {
        Err(unimplemented())
    }

    async fn mark_read(
        &self,
        _: tonic::Request<pb::MarkReadRequest>,
    ) -> Result<tonic::Response<pb::MarkReadResponse>, Status> {
        Err(unimplemented())
    }

    async fn unsubscribe(
        &self,
        _: tonic::Request<pb::UnsubscribeRequest>,
    ) -> Result<tonic::Response<pb::UnsubscribeResponse>, Status> {
        Err(unimplemented())
    }

    async fn get_preferences(
        &self,
        _: tonic::Request<pb::GetPreferencesRequest>,
    ) -> Result<tonic::Response<pb::GetPreferencesResponse>, Status> {
        Err(unimplemented())
    }

    async fn update_preferences(
        &self,
        _: tonic::Request<pb::UpdatePreferencesRequest>,
    ) -> Result<tonic::Response<pb::UpdatePreferencesResponse>, Status> {
        Err(unimplemented())
    }

    async fn create_webhook_endpoint(
        &self,
        _: tonic::Request<pb::CreateWebhookEndpointRequest>,
    ) -> Result<tonic::Response<pb::CreateWebhookEndpointResponse>, Status> {
        Err(unimplemented())
    }

    async fn rotate_webhook_endpoint_secret(
        &self,
        _: tonic::Request<pb::RotateWebhookEndpointSecretRequest>,
    ) -> Result<tonic::Response<pb::RotateWebhookEndpointSecretResponse>, Status> {
        Err(unimplemented())
    }

    async fn list_webhook_endpoints(
        &self,
        _: tonic::Request<pb::ListWebhookEndpointsRequest>,
    ) -> Result<tonic::Response<pb::ListWebhookEndpointsResponse>, Status> {
        Err(unimplemented())
    }

    async fn delete_webhook_endpoint(
        &self,
        _: tonic::Request<pb::DeleteWebhookEndpointRequest>,
    ) -> Result<tonic::Response<pb::DeleteWebhookEndpointResponse>, Status> {
        Err(unimplemented())
    }

    async fn list_dead_letters(
        &self,
        _: tonic::Request<pb::ListDeadLettersRequest>,
    ) -> Result<tonic::Response<pb::ListDeadLettersResponse>, Status> {
        Err(unimplemented())
    }

    async fn redeliver_dead_letter(
        &self,
        _: tonic::Request<pb::RedeliverDeadLetterRequest>,
    ) -> Result<tonic::Response<pb::RedeliverDeadLetterResponse>, Status> {
        Err(unimplemented())
    }
}

/// The suite, a gateway whose `notifications` upstream is the fake, and a
/// signed-in user's access token.
struct Setup {
    suite: Suite,
    gateway: TestGateway,
    fake: FakeNotifications,
    calls: mpsc::UnboundedReceiver<Call>,
    token: String,
}

impl Setup {
    async fn start(held: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(held, &[]).await
    }

    async fn start_with(held: &[&str], args: &[&str]) -> anyhow::Result<Self> {
        let suite = keel_testkit::spawn_suite().await?;
        let (calls_tx, calls) = mpsc::unbounded_channel();
        let fake = FakeNotifications {
            log: Arc::new(Mutex::new(Log {
                held: held.iter().map(|id| notification(id)).collect(),
                live: broadcast::channel(64).0,
            })),
            calls: calls_tx,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tonic::transport::Server::builder()
            .add_service(NotificationsServiceServer::new(fake.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        let gateway = suite.spawn_gateway_with([("notifications", url)].into(), args).await?;
        suite
            .create_user("ada@example.com", "correct horse battery", &[Role::User])
            .await?;
        let login = gateway
            .http()
            .post(
                "/v1/auth:login",
                None,
                &json!({ "email": "ada@example.com", "password": "correct horse battery" }),
            )
            .await?
            .json();
        let token = login["tokens"]["accessToken"].as_str().expect("a token").to_owned();
        Ok(Setup {
            suite,
            gateway,
            fake,
            calls,
            token,
        })
    }

    async fn call(&mut self) -> Call {
        tokio::time::timeout(PATIENCE, self.calls.recv())
            .await
            .expect("the upstream was called in time")
            .expect("a call")
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.gateway.stop().await?;
        self.suite.stop().await
    }
}

fn id_of(json: &str) -> String {
    let value: Value = serde_json::from_str(json).expect("JSON");
    value["notification"]["id"].as_str().expect("an id").to_owned()
}

async fn ended(call: Call) {
    let ended = tokio::time::timeout(PATIENCE, call.ended)
        .await
        .expect("the upstream call ends in time");
    assert!(ended.is_err(), "the call's stream was dropped");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_carry_their_ids_and_last_event_id_resumes_after_them() -> anyhow::Result<()> {
    let mut setup = Setup::start(&["n01", "n02", "n03"]).await?;

    let (head, mut first) = Sse::open(&setup.gateway, "/v1/notifications:stream", Some(&setup.token), None).await?;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(
        head.headers.get("content-type").map(HeaderValue::as_bytes),
        Some(&b"text/event-stream"[..])
    );
    let retry = first.next().await?.expect("the retry hint");
    assert_eq!(retry.retry.as_deref(), Some("2000"));
    let call = setup.call().await;
    assert_eq!(call.after, "", "no resume asked");
    let mut seen = Vec::new();
    setup.fake.push("n04");
    setup.fake.push("n05");
    for _ in 0..2 {
        let (id, data) = first.data().await?;
        assert_eq!(id.as_deref(), Some(id_of(&data).as_str()), "id: is the notification id");
        let reply: Value = serde_json::from_str(&data)?;
        assert_eq!(reply["notification"]["eventType"], "order.paid");
        seen.push(id_of(&data));
    }
    // The client goes away; the upstream call ends with it.
    drop(first);
    ended(call).await;

    // Missed while away.
    setup.fake.push("n06");
    // An EventSource reconnects to the URL it first opened (here with an
    // older id in the query) plus the header: the header wins.
    let (_, mut second) = Sse::open(
        &setup.gateway,
        "/v1/notifications:stream?afterNotificationId=n01",
        Some(&setup.token),
        seen.last().map(String::as_str),
    )
    .await?;
    assert_eq!(second.next().await?.expect("retry").retry.as_deref(), Some("2000"));
    assert_eq!(setup.call().await.after, "n05");
    let (id, data) = second.data().await?;
    assert_eq!(id.as_deref(), Some("n06"));
    seen.push(id_of(&data));
    setup.fake.push("n07");
    let (id, data) = second.data().await?;
    assert_eq!(id.as_deref(), Some("n07"));
    seen.push(id_of(&data));
    assert_eq!(seen, ["n04", "n05", "n06", "n07"], "nothing missed or repeated");

    // The query alone still resumes.
    let (_, mut third) = Sse::open(
        &setup.gateway,
        "/v1/notifications:stream?afterNotificationId=n05",
        Some(&setup.token),
        None,
    )
    .await?;
    third.next().await?;
    assert_eq!(setup.call().await.after, "n05");
    assert_eq!(third.data().await?.0.as_deref(), Some("n06"));
    drop((second, third));
    setup.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_abort_ends_the_events_with_an_error_event() -> anyhow::Result<()> {
    let mut setup = Setup::start(&["n01", "n02"]).await?;
    let (_, mut sse) = Sse::open(
        &setup.gateway,
        "/v1/notifications:stream",
        Some(&setup.token),
        Some("n01"),
    )
    .await?;
    sse.next().await?;
    let _call = setup.call().await;
    assert_eq!(sse.data().await?.0.as_deref(), Some("n02"));
    setup.fake.fail(Status::with_error_details(
        Code::Aborted,
        "the client reads too slowly",
        ErrorDetails::with_error_info("STREAM_BEHIND", "keel.notifications", HashMap::new()),
    ));
    let error = sse.next().await?.expect("an error event");
    assert_eq!(error.event.as_deref(), Some("error"));
    assert_eq!(error.id, None);
    let status: Value = serde_json::from_str(&error.data.expect("data"))?;
    assert_eq!(status["code"], 10);
    assert_eq!(status["details"][0]["reason"], "STREAM_BEHIND");
    assert!(sse.next().await?.is_none(), "the stream ends after its error");

    // No token, no stream.
    let (head, _) = Sse::open(&setup.gateway, "/v1/notifications:stream", None, None).await?;
    assert_eq!(head.status, StatusCode::UNAUTHORIZED);
    setup.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_frames_hold_the_event_data_and_resume_from_the_query() -> anyhow::Result<()> {
    let mut setup = Setup::start(&["n01", "n02", "n03"]).await?;
    let bearer = [("authorization", format!("Bearer {}", setup.token))];
    let path = "/v1/notifications:stream?afterNotificationId=n01";
    let (mut socket, response) = websocket(&setup.gateway, path, &bearer).await?;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(response.headers().get("x-request-id").is_some());
    let ws_call = setup.call().await;
    assert_eq!(ws_call.after, "n01");
    assert!(
        ws_call
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Bearer "))
    );

    let (_, mut sse) = Sse::open(&setup.gateway, path, Some(&setup.token), None).await?;
    sse.next().await?;
    let _sse_call = setup.call().await;
    for expected in ["n02", "n03"] {
        let frame = text(&mut socket).await?;
        let (id, data) = sse.data().await?;
        assert_eq!(frame, data, "a frame is the event's data");
        assert_eq!(id.as_deref(), Some(expected));
    }
    setup.fake.push("n04");
    assert_eq!(text(&mut socket).await?, sse.data().await?.1);

    setup.fake.fail(Status::with_error_details(
        Code::Aborted,
        "the client reads too slowly",
        ErrorDetails::with_error_info("STREAM_BEHIND", "keel.notifications", HashMap::new()),
    ));
    let error: Value = serde_json::from_str(&text(&mut socket).await?)?;
    assert_eq!(error["error"]["code"], 10);
    assert_eq!(error["error"]["details"][0]["reason"], "STREAM_BEHIND");
    assert_eq!(close_code(&mut socket).await?, CloseCode::Normal);
    let sse_error = sse.next().await?.expect("the SSE error");
    let sse_error: Value = serde_json::from_str(&sse_error.data.expect("data"))?;
    assert_eq!(error["error"], sse_error);
    ended(ws_call).await;

    // No token: the handshake is refused with 401.
    match websocket(&setup.gateway, "/v1/notifications:stream", &[]).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), StatusCode::UNAUTHORIZED),
        other => panic!("expected 401, got {:?}", other.map(|(_, response)| response.status())),
    }
    // A unary route does not upgrade.
    match websocket(&setup.gateway, "/v1/accounts/me/balance", &bearer).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), StatusCode::BAD_REQUEST),
        other => panic!("expected 400, got {:?}", other.map(|(_, response)| response.status())),
    }
    setup.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_token_rides_in_the_subprotocols_and_closing_cancels_the_call() -> anyhow::Result<()> {
    let mut setup = Setup::start(&["n01", "n02"]).await?;
    let protocols = [("sec-websocket-protocol", format!("keel.v1, bearer.{}", setup.token))];
    let (mut socket, response) = websocket(
        &setup.gateway,
        "/v1/notifications:stream?afterNotificationId=n00",
        &protocols,
    )
    .await?;
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(HeaderValue::as_bytes),
        Some(&b"keel.v1"[..])
    );
    let call = setup.call().await;
    assert_eq!(call.authorization, Some(format!("Bearer {}", setup.token)));
    assert_eq!(id_of(&text(&mut socket).await?), "n01");
    assert_eq!(id_of(&text(&mut socket).await?), "n02");
    // The client closes: the upstream call ends.
    socket.close(None).await?;
    ended(call).await;

    // UNAVAILABLE (the service shutting down) closes with 1001: reconnect.
    let (mut socket, _) = websocket(&setup.gateway, "/v1/notifications:stream", &protocols).await?;
    let _call = setup.call().await;
    setup
        .fake
        .fail(Status::unavailable("the notifications service is stopping"));
    let error: Value = serde_json::from_str(&text(&mut socket).await?)?;
    assert_eq!(error["error"]["code"], 14);
    assert_eq!(close_code(&mut socket).await?, CloseCode::Away);
    setup.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_the_gateway_ends_open_streams_promptly() -> anyhow::Result<()> {
    let mut setup = Setup::start(&["n01"]).await?;
    let (_, mut sse) = Sse::open(&setup.gateway, "/v1/notifications:stream", Some(&setup.token), None).await?;
    sse.next().await?;
    let sse_call = setup.call().await;
    let bearer = [("authorization", format!("Bearer {}", setup.token))];
    let (mut socket, _) = websocket(&setup.gateway, "/v1/notifications:stream", &bearer).await?;
    let ws_call = setup.call().await;

    let Setup { suite, gateway, .. } = setup;
    let started = tokio::time::Instant::now();
    let stopped = tokio::spawn(gateway.stop());
    assert!(sse.next().await?.is_none(), "the event stream ends");
    assert_eq!(close_code(&mut socket).await?, CloseCode::Away);
    stopped.await??;
    // Well within the 4 s grace period: the streams did not hold it up.
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    ended(sse_call).await;
    ended(ws_call).await;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_websocket_keeps_its_place_under_the_connection_cap() -> anyhow::Result<()> {
    let mut setup = Setup::start_with(&["n01"], &["--max-connections", "1", "--idle-timeout-ms", "300"]).await?;
    // The login's kept-alive connection goes idle and is closed.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let bearer = [("authorization", format!("Bearer {}", setup.token))];
    let (mut socket, _) = websocket(&setup.gateway, "/v1/notifications:stream", &bearer).await?;
    let call = setup.call().await;
    // hyper has let go of the upgraded connection, but it still counts.
    let health = tokio::time::timeout(Duration::from_millis(800), setup.gateway.http().get("/healthz", None)).await;
    assert!(health.is_err(), "a second connection waits while the WebSocket is open");
    socket.close(None).await?;
    ended(call).await;
    let health = tokio::time::timeout(PATIENCE, setup.gateway.http().get("/healthz", None)).await??;
    assert_eq!(health.status, StatusCode::OK);
    setup.stop().await
}
