//! A route as an OpenAPI operation: its path, query and header parameters,
//! its request body, and its responses (JSON, Server-Sent Events, WebSocket).

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value as Json, json};

use super::{Builder, comments, schema::Side, well_known::well_known};
use crate::{
    descriptors::{is_string_like, settable_field_path},
    routes::Route,
};

/// How a streaming route answers a WebSocket upgrade (see `websocket.rs`).
const WEBSOCKET: &str = "Switching Protocols: a GET with `Upgrade: websocket` (RFC 6455) gets the same stream as \
    WebSocket text frames, one reply's JSON per frame. An error is one frame `{\"error\": <google.rpc.Status>}` \
    and a close: 1001 for UNAVAILABLE or the gateway stopping (reconnect), 1008 for UNAUTHENTICATED and \
    PERMISSION_DENIED, 1011 for internal errors, 1000 otherwise (the stream ended; ABORTED/STREAM_BEHIND \
    means reconnect). Resume with the request's query parameter. Browsers, which cannot set \
    `Authorization` here, may offer the subprotocols `keel.v1, bearer.<access token>` instead.";

impl Builder {
    pub(super) fn operation(&mut self, route: &Route, operation_id: String) -> Json {
        let input = route.rpc.input();
        let path_fields: Vec<Vec<String>> = route.template.field_paths().map(<[String]>::to_vec).collect();
        let mut parameters = Vec::new();
        for (field_path, name) in path_fields.iter().zip(&route.path_parameters) {
            let Some(field) = settable_field_path(&input, field_path)
                .ok()
                .and_then(|mut path| path.pop())
            else {
                continue;
            };
            parameters.push(json!({
                "name": name,
                "in": "path",
                "required": true,
                "description": comments(&field.parent_file(), field.path()).unwrap_or_default(),
                "schema": self.field_schema(&field, Side::Request),
            }));
        }
        if route.body.as_deref() != Some("*") {
            let body_field = route.body.as_deref();
            let mut query = Vec::new();
            self.query_parameters(&input, &mut Vec::new(), &path_fields, body_field, &mut query);
            parameters.extend(query);
        }

        let mut operation = Map::new();
        operation.insert("operationId".into(), json!(operation_id));
        operation.insert("tags".into(), json!([route.rpc.parent_service().name()]));
        if let Some(text) = comments(&route.rpc.parent_file(), route.rpc.path()) {
            let summary = text
                .split(". ")
                .next()
                .unwrap_or(&text)
                .trim_end_matches('.')
                .to_owned();
            operation.insert("summary".into(), json!(summary));
            operation.insert("description".into(), json!(text));
        }
        if let Some(resume) = route.resume.as_ref().filter(|_| route.is_streaming()) {
            parameters.push(json!({
                "name": "Last-Event-ID",
                "in": "header",
                "required": false,
                "description": format!(
                    "The `id:` of the last event received: the stream resumes after it. \
                    An EventSource sends it when it reconnects; it wins over the `{}` query parameter.",
                    resume.resume_parameter()
                ),
                "schema": { "type": "string" },
            }));
        }
        if !parameters.is_empty() {
            operation.insert("parameters".into(), Json::Array(parameters));
        }
        let body_schema = match route.body.as_deref() {
            None => None,
            Some("*") => Some(self.body_schema(&input, &path_fields, Side::Request)),
            // A raw body (google.api.HttpBody) is whatever the sender signs:
            // any JSON, passed on byte for byte.
            Some(name) => input.get_field_by_name(name).map(|field| match field.kind() {
                Kind::Message(m) if m.full_name() == crate::bind::HTTP_BODY => {
                    json!({ "description": "The raw body, passed on unchanged." })
                }
                // The fields the path sets are left out of the body, as they
                // are of a `*` body.
                Kind::Message(message) if path_fields.iter().any(|p| p.len() == 2 && p[0] == name) => {
                    let nested: Vec<Vec<String>> = path_fields
                        .iter()
                        .filter(|p| p.first().is_some_and(|first| first == name))
                        .map(|p| p[1..].to_vec())
                        .collect();
                    // An update (PATCH, AIP-134) sends only what changes.
                    let side = if route.method == "PATCH" {
                        Side::Update
                    } else {
                        Side::Request
                    };
                    self.body_schema(&message, &nested, side)
                }
                _ => self.value_schema(&field, Side::Request),
            }),
        };
        if let Some(schema) = body_schema {
            // A body is required when it holds a required field (`*`), or is
            // one (a named body field).
            let required = match route.body.as_deref() {
                Some("*") => schema
                    .get("required")
                    .is_some_and(|r| r.as_array().is_some_and(|r| !r.is_empty())),
                Some(name) => input
                    .get_field_by_name(name)
                    .is_some_and(|field| self.required_in_request(&field)),
                None => false,
            };
            operation.insert(
                "requestBody".into(),
                json!({ "required": required, "content": { "application/json": { "schema": schema } } }),
            );
        }
        let output = route.rpc.output();
        let reply_schema = match &route.response_body {
            Some(name) => output
                .get_field_by_name(name)
                .map_or(json!({}), |field| self.field_schema(&field, Side::Reply)),
            None => self.message_ref(&output, Side::Reply),
        };
        let ok = if route.is_streaming() {
            let id = if route.resume.is_some() {
                " Each event's `id:` is the reply's id; reconnect with it as `Last-Event-ID` to miss nothing."
            } else {
                ""
            };
            json!({
                "description": format!(
                    "A stream of Server-Sent Events: a `retry:` hint first, then each `data:` line holds one \
                    reply as JSON; an `error` event holds a google.rpc.Status and ends the stream; a \
                    `: keep-alive` comment comes every 15 s.{id}"
                ),
                "content": { "text/event-stream": { "schema": { "type": "string" } } },
            })
        } else {
            json!({ "description": "OK", "content": { "application/json": { "schema": reply_schema } } })
        };
        let mut responses = json!({
            "200": ok,
            "default": {
                "description": "An error: the HTTP status follows the gRPC code.",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/google.rpc.Status" } } },
            },
        });
        if route.is_streaming() && route.method == "GET" {
            responses["101"] = json!({ "description": WEBSOCKET });
        }
        operation.insert("responses".into(), responses);
        let security = if route.anonymous {
            json!([])
        } else {
            json!([{ "bearer": [] }])
        };
        operation.insert("security".into(), security);
        Json::Object(operation)
    }

    /// The `*` body: the request without the fields the path sets.
    fn body_schema(&mut self, input: &MessageDescriptor, path_fields: &[Vec<String>], side: Side) -> Json {
        let mut schema = self.object_schema(input, side);
        let top_level: Vec<&str> = path_fields
            .iter()
            .filter(|path| path.len() == 1)
            .map(|path| path[0].as_str())
            .collect();
        for name in top_level {
            let Some(field) = input.get_field_by_name(name) else {
                continue;
            };
            if let Some(Json::Object(properties)) = schema.get_mut("properties") {
                properties.remove(field.json_name());
            }
            if let Some(Json::Array(required)) = schema.get_mut("required") {
                required.retain(|r| r != field.json_name());
            }
        }
        schema
    }

    /// Query parameters: every scalar (or repeated scalar) field reachable
    /// from the request, except those the path or the body sets.
    fn query_parameters(
        &mut self,
        message: &MessageDescriptor,
        prefix: &mut Vec<FieldDescriptor>,
        path_fields: &[Vec<String>],
        body_field: Option<&str>,
        out: &mut Vec<Json>,
    ) {
        if prefix.len() > 3 {
            return;
        }
        for field in message.fields() {
            prefix.push(field.clone());
            let top_is_body = prefix.len() == 1 && body_field == Some(field.name());
            let bound = path_fields.iter().any(|path| {
                path.iter()
                    .map(String::as_str)
                    .eq(prefix.iter().map(FieldDescriptor::name))
            });
            if !top_is_body && !bound && !field.is_map() && !self.output_only(&field) {
                match field.kind() {
                    // What binding can set from a query value: scalars and
                    // string-like well-known types; other messages by their fields.
                    Kind::Message(inner) if is_string_like(&inner) => out.push(self.query_parameter(prefix, &field)),
                    Kind::Message(inner) => {
                        if !field.is_list() && !well_known(&inner) {
                            self.query_parameters(&inner, prefix, path_fields, body_field, out);
                        }
                    }
                    _ => out.push(self.query_parameter(prefix, &field)),
                }
            }
            prefix.pop();
        }
    }

    /// The query parameter for `field`, reached by `path` (which ends with
    /// it) and named by the path's dotted JSON names.
    fn query_parameter(&mut self, path: &[FieldDescriptor], field: &FieldDescriptor) -> Json {
        let name = path
            .iter()
            .map(FieldDescriptor::json_name)
            .collect::<Vec<_>>()
            .join(".");
        let required = path.len() == 1 && self.required_in_request(field);
        json!({
            "name": name,
            "in": "query",
            "required": required,
            "description": comments(&field.parent_file(), field.path()).unwrap_or_default(),
            "schema": self.field_schema(field, Side::Request),
            "explode": true,
        })
    }
}
