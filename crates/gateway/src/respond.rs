//! Replies as HTTP: one JSON object for a unary call, Server-Sent Events for
//! a server stream.

use std::time::Duration;

use axum::{body::Body, response::Response};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use http::{HeaderValue, StatusCode, header};
use prost_reflect::{DynamicMessage, SerializeOptions};
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

/// How often an idle event stream gets a comment line, so proxies that cut
/// silent connections leave it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A server stream as `text/event-stream`: each reply is a `data:` event;
/// an error ends the stream with an `error` event holding the
/// `google.rpc.Status` JSON; a `: keep-alive` comment goes out every 15 s.
pub fn event_stream(
    route: Route,
    descriptors: Descriptors,
    replies: impl Stream<Item = Result<DynamicMessage, Status>> + Send + 'static,
) -> Response {
    enum Item {
        Event(Bytes),
        KeepAlive,
        End,
    }
    let events = replies
        .map(move |reply| match reply.and_then(|message| to_json(&route, &message)) {
            Ok(json) => Ok(Bytes::from([b"data: ".as_slice(), &json, b"\n\n"].concat())),
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
        .map(|item| {
            Ok::<_, std::convert::Infallible>(match item {
                Item::Event(bytes) => bytes,
                Item::KeepAlive | Item::End => Bytes::from_static(b": keep-alive\n\n"),
            })
        });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn to_json(route: &Route, message: &DynamicMessage) -> Result<Vec<u8>, Status> {
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
