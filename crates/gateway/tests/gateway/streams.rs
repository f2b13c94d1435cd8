//! Server streams as Server-Sent Events, against a scripted notifications
//! service (notifications itself is not built yet).

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use std::convert::Infallible;

use bytes::{BufMut as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::{body::Frame, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keel::notifications::v1::{Notification, StreamNotificationsRequest, StreamNotificationsResponse};
use keel_platform::Role;
use prost::Message as _;
use serde_json::json;
use tokio::sync::mpsc;

/// One length-prefixed gRPC message.
fn frame(message: &impl prost::Message) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(0);
    buf.put_u32(u32::try_from(message.encoded_len()).expect("a small message"));
    message.encode(&mut buf).expect("encodes");
    buf.freeze()
}

/// Answers StreamNotifications with two notifications, then fails with
/// FAILED_PRECONDITION; reports each request it gets.
async fn scripted_notifications() -> anyhow::Result<(String, mpsc::UnboundedReceiver<StreamNotificationsRequest>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (seen, requests) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let seen = seen.clone();
                async move {
                    let body = request.into_body().collect().await?.to_bytes();
                    let _ = seen.send(
                        StreamNotificationsRequest::decode(body.get(5..).unwrap_or_default()).unwrap_or_default(),
                    );
                    let notification = |id: &str| StreamNotificationsResponse {
                        notification: Some(Notification {
                            id: id.into(),
                            event_type: "order.paid".into(),
                            ..Default::default()
                        }),
                    };
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("9"));
                    trailers.insert("grpc-message", HeaderValue::from_static("stream%20closed"));
                    let frames = vec![
                        Ok::<_, Infallible>(Frame::data(frame(&notification("n1")))),
                        Ok(Frame::data(frame(&notification("n2")))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let response = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(StreamBody::new(futures::stream::iter(frames)))
                        .expect("a response");
                    Ok::<_, hyper::Error>(response)
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    Ok((url, requests))
}

/// Creates ada and signs her in through the gateway: her access token.
async fn signed_in_ada(suite: &keel_testkit::Suite, http: &keel_testkit::http::HttpClient) -> anyhow::Result<String> {
    suite
        .create_user("ada@example.com", "correct horse battery", &[Role::User])
        .await?;
    let login = http
        .post(
            "/v1/auth:login",
            None,
            &json!({ "email": "ada@example.com", "password": "correct horse battery" }),
        )
        .await?
        .json();
    Ok(login["tokens"]["accessToken"].as_str().expect("a token").to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn server_streams_become_server_sent_events() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (notifications, mut requests) = scripted_notifications().await?;
    let gateway = suite
        .spawn_gateway_with([("notifications", notifications)].into(), &[])
        .await?;
    let http = gateway.http();
    let token = &signed_in_ada(&suite, http).await?;

    let stream = http
        .get("/v1/notifications:stream?afterNotificationId=n0", Some(token))
        .await?;
    assert_eq!(stream.status, StatusCode::OK);
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    let body = String::from_utf8(stream.body.to_vec())?;
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 4, "{body}");
    assert_eq!(events[0], "retry: 2000", "browsers reconnect promptly");
    let events = &events[1..];
    // The id is the notification's (keel.common.v1.stream_resume).
    let first = events[0]
        .strip_prefix("id: n1\ndata: ")
        .expect("a data event with its id");
    let first: serde_json::Value = serde_json::from_str(first)?;
    assert_eq!(first["notification"]["id"], "n1");
    assert_eq!(first["notification"]["eventType"], "order.paid");
    let error = events[2].strip_prefix("event: error\ndata: ").expect("an error event");
    let error: serde_json::Value = serde_json::from_str(error)?;
    assert_eq!(error["code"], 9);
    assert_eq!(error["message"], "stream closed");
    assert_eq!(requests.recv().await.expect("a request").after_notification_id, "n0");

    // With notifications configured, its routes are in the document too.
    let document = http.get("/openapi.json", None).await?.json();
    assert!(document["paths"]["/v1/notifications:stream"]["get"].is_object());

    gateway.stop().await?;
    suite.stop().await
}

/// Accepts HTTP/2 and drops each connection 100 ms after a request
/// arrives, before answering: a replica killed mid-call.
async fn dying_upstream() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service = service_fn(|_request: http::Request<hyper::body::Incoming>| async {
                std::future::pending::<Result<http::Response<http_body_util::Empty<Bytes>>, Infallible>>().await
            });
            let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(std::time::Duration::from_millis(100), connection).await;
            });
        }
    });
    Ok(url)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_dies_mid_call_is_503_unavailable_not_500() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let gateway = suite
        .spawn_gateway_with([("notifications", dying_upstream().await?)].into(), &[])
        .await?;
    let http = gateway.http();
    let token = &signed_in_ada(&suite, http).await?;
    let listed = http.get("/v1/notifications", Some(token)).await?;
    assert_eq!(listed.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", listed.json());
    assert_eq!(listed.json()["code"], 14, "UNAVAILABLE: retry");
    gateway.stop().await?;
    suite.stop().await
}
