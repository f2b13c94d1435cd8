//! Replies as HTTP: one JSON object for a unary call, Server-Sent Events for
//! a server stream.

use std::time::Duration;

use axum::{body::Body, response::Response};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use http::{HeaderValue, StatusCode, header};
use prost_reflect::{DynamicMessage, SerializeOptions};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::{descriptors::Descriptors, error::status_json, routes::Route};

/// The reply of a unary call as `200 application/json`. Scalars and lists at
/// their default value are written out (`"balance": "0"` rather than no
/// field), which is what clients reading the OpenAPI schemas expect; unset
/// messages are left out.
pub fn json(route: &Route, message: &DynamicMessage) -> Result<Response, Status> {
    let body = to_json(route, message)?;
    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// How often an idle event stream gets a comment line (and a WebSocket a
/// ping), so proxies that cut silent connections leave it open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How long an EventSource waits before reconnecting, sent once as the
/// stream's `retry:` field (browsers default to several seconds).
const RETRY: &[u8] = b"retry: 2000\n\n";

/// A server stream as `text/event-stream`: each reply is a `data:` event,
/// with its `id:` when the route resumes (`keel.common.v1.stream_resume`);
/// an error ends the stream with an `error` event holding the
/// `google.rpc.Status` JSON; a `: keep-alive` comment goes out every 15 s;
/// `stop` ends the body (the gateway is stopping; clients reconnect with
/// their `Last-Event-ID`).
pub fn event_stream(
    route: Route,
    descriptors: Descriptors,
    replies: impl Stream<Item = Result<DynamicMessage, Status>> + Send + 'static,
    stop: CancellationToken,
) -> Response {
    enum Item {
        Event(Bytes),
        KeepAlive,
        End,
    }
    let events = replies
        .map(move |reply| match reply.and_then(|message| event(&route, &message)) {
            Ok(event) => Ok(event),
            Err(status) => Err(Bytes::from(
                [
                    b"event: error\ndata: ".as_slice(),
                    &status_json(&descriptors, &status),
                    b"\n\n",
                ]
                .concat(),
            )),
        })
        // The stream ends after its first error, as gRPC's does.
        .scan(false, |ended, event| {
            if *ended {
                return futures::future::ready(None);
            }
            *ended = event.is_err();
            futures::future::ready(Some(Item::Event(event.unwrap_or_else(|error| error))))
        })
        .chain(futures::stream::once(futures::future::ready(Item::End)));
    let keep_alive = futures::stream::unfold((), |()| async {
        tokio::time::sleep(KEEP_ALIVE).await;
        Some((Item::KeepAlive, ()))
    });
    let body = futures::stream::select(events, keep_alive)
        .take_while(|item| futures::future::ready(!matches!(item, Item::End)))
        .map(|item| match item {
            Item::Event(bytes) => bytes,
            Item::KeepAlive | Item::End => Bytes::from_static(b": keep-alive\n\n"),
        });
    let body = futures::stream::once(futures::future::ready(Bytes::from_static(RETRY)))
        .chain(body)
        .take_until(stop.cancelled_owned())
        .map(Ok::<_, std::convert::Infallible>);
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// One reply as an SSE event: `id:` (when the route resumes and the reply
/// has one), then `data:`.
fn event(route: &Route, message: &DynamicMessage) -> Result<Bytes, Status> {
    let json = to_json(route, message)?;
    let id = route.resume.as_ref().and_then(|resume| resume.cursor_of(message));
    let mut event = Vec::with_capacity(json.len() + 64);
    if let Some(id) = id {
        event.extend_from_slice(b"id: ");
        event.extend_from_slice(id.as_bytes());
        event.push(b'\n');
    }
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(&json);
    event.extend_from_slice(b"\n\n");
    Ok(event.into())
}

/// A reply as the JSON a client sees (the `response_body` field when the
/// route names one).
pub fn to_json(route: &Route, message: &DynamicMessage) -> Result<Vec<u8>, Status> {
    let options = SerializeOptions::new().skip_default_fields(false);
    let failed = |err: serde_json::Error| Status::internal(format!("encoding the reply: {err}"));
    match &route.response_body {
        None => {
            let mut body = Vec::new();
            message
                .serialize_with_options(&mut serde_json::Serializer::new(&mut body), &options)
                .map_err(failed)?;
            Ok(body)
        }
        Some(field) => {
            let whole = message
                .serialize_with_options(serde_json::value::Serializer, &options)
                .map_err(failed)?;
            let name = route
                .rpc
                .output()
                .get_field_by_name(field)
                .map_or_else(|| field.clone(), |f| f.json_name().to_owned());
            serde_json::to_vec(whole.get(&name).unwrap_or(&serde_json::Value::Null)).map_err(failed)
        }
    }
}
