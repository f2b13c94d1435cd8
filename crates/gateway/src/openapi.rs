//! The OpenAPI 3.1 document, generated from the same routes and descriptors
//! the gateway serves, with the protos' comments as descriptions.

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{
    DescriptorPool, ExtensionDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor, Value,
};
use serde_json::{Map, Value as Json, json};

use keel_platform::serve::rules::{Check, FieldRules, RequiredWhen};

use crate::{
    descriptors::{Descriptors, is_string_like, settable_field_path},
    routes::{Route, RouteTable},
};

/// How a streaming route answers a WebSocket upgrade (see `websocket.rs`).
const WEBSOCKET: &str = "Switching Protocols: a GET with `Upgrade: websocket` (RFC 6455) gets the same stream as \
    WebSocket text frames, one reply's JSON per frame. An error is one frame `{\"error\": <google.rpc.Status>}` \
    and a close: 1001 for UNAVAILABLE or the gateway stopping (reconnect), 1008 for UNAUTHENTICATED and \
    PERMISSION_DENIED, 1011 for internal errors, 1000 otherwise (the stream ended; ABORTED/STREAM_BEHIND \
    means reconnect). Resume with the request's query parameter. Browsers, which cannot set \
    `Authorization` here, may offer the subprotocols `keel.v1, bearer.<access token>` instead.";

/// `google.api.FieldBehavior` values the document uses.
const REQUIRED: i32 = 2;
const OUTPUT_ONLY: i32 = 3;

/// The OpenAPI document describing every route in `routes`.
pub fn document(descriptors: &Descriptors, routes: &RouteTable) -> Json {
    let mut builder = Builder::new(descriptors.pool());
    let mut paths: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
    let mut operation_ids: BTreeMap<String, usize> = BTreeMap::new();
    let mut tags = BTreeMap::new();
    let ids: Vec<String> = routes
        .routes()
        .iter()
        .map(|route| {
            let base_id = format!("{}_{}", route.rpc.parent_service().name(), route.rpc.name());
            let seen = operation_ids.entry(base_id.clone()).or_insert(0);
            *seen += 1;
            if *seen == 1 {
                base_id
            } else {
                format!("{base_id}_{seen}")
            }
        })
        .collect();
    for (route, operation_id) in routes.routes().iter().zip(&ids) {
        let service = route.rpc.parent_service();
        tags.entry(service.name().to_owned())
            .or_insert_with(|| comments(&service.parent_file(), service.path()));
        let mut operation = builder.operation(route, operation_id.clone());
        let links = links(route, routes.routes(), &ids);
        if !links.is_empty() {
            operation["responses"]["200"]["links"] = Json::Object(links);
        }
        paths
            .entry(route.openapi_path.to_string())
            .or_default()
            .insert(route.method.to_ascii_lowercase(), operation);
    }
    let mut schemas = builder.finish();
    schemas.insert("google.rpc.Status".to_owned(), status_schema());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Keel API",
            "version": "v1",
            "description": "REST/JSON for Keel's services, transcoded to gRPC by the gateway. \
                Bodies use the proto3 JSON mapping: lowerCamelCase names, 64-bit integers as strings, \
                enum values by name, RFC 3339 timestamps. Errors are google.rpc.Status objects.",
        },
        "tags": tags
            .into_iter()
            .map(|(name, description)| json!({ "name": name, "description": description.unwrap_or_default() }))
            .collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from POST /v1/auth:login or /v1/auth:refresh.",
                },
            },
        },
    })
}

/// OpenAPI links from a reply that holds a resource to the routes its id
/// names: by AIP-122 a `{product_id}` path parameter names a Product, so the
/// Product in CreateProduct's reply links to GetProduct, UpdateProduct and
/// AdjustStock. A client (or a fuzzer's stateful phase) follows them from a
/// created resource to what acts on it.
fn links(route: &Route, routes: &[Route], operation_ids: &[String]) -> Map<String, Json> {
    let mut links = Map::new();
    if route.is_streaming() || route.response_body.is_some() {
        return links;
    }
    for field in route.rpc.output().fields() {
        let Kind::Message(resource) = field.kind() else {
            continue;
        };
        if field.is_list() || field.is_map() || resource.get_field_by_name("id").is_none() {
            continue;
        }
        let parameter = format!("{}_id", snake_case(resource.name()));
        for (target, operation_id) in routes.iter().zip(operation_ids) {
            if target.path_parameters != [parameter.as_str()] {
                continue;
            }
            links.insert(
                operation_id.clone(),
                json!({
                    "operationId": operation_id,
                    "parameters": { &parameter: format!("$response.body#/{}/id", field.json_name()) },
                    "description": format!("The {} in this reply.", resource.name()),
                }),
            );
        }
    }
    links
}

/// A message name as AIP's snake_case: `WebhookEndpoint` is
/// `webhook_endpoint`, and an acronym is one word (`HTTPBody` is `http_body`).
fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            let after_lower = chars[i - 1].is_ascii_lowercase() || chars[i - 1].is_ascii_digit();
            let acronym_ends =
                chars[i - 1].is_ascii_uppercase() && chars.get(i + 1).is_some_and(char::is_ascii_lowercase);
            if after_lower || acronym_ends {
                out.push('_');
            }
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Where a schema is used: a request's schemas carry the protos' request
/// rules (buf.validate), which the services enforce on what they receive;
/// replies are described as they are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    /// The resource in an update (PATCH): fields left out are unchanged,
    /// so only what the rules refuse to leave unset is required.
    Update,
    Reply,
}

struct Builder {
    field_behavior: Option<ExtensionDescriptor>,
    /// Messages referenced so far, and those whose schema is written.
    pending: Vec<(MessageDescriptor, Side)>,
    schemas: Map<String, Json>,
    queued: BTreeSet<String>,
}

impl Builder {
    fn new(pool: &DescriptorPool) -> Self {
        Builder {
            field_behavior: pool.get_extension_by_name("google.api.field_behavior"),
            pending: Vec::new(),
            schemas: Map::new(),
            queued: BTreeSet::new(),
        }
    }

    fn operation(&mut self, route: &Route, operation_id: String) -> Json {
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

    /// Whether a request must set `field`: it is REQUIRED (AIP-203), or
    /// leaving it unset breaks one of its rules.
    fn required_in_request(&self, field: &FieldDescriptor) -> bool {
        self.behaviors(field).contains(&REQUIRED) || request_rules(field).is_some_and(|r| r.refuses_unset(field))
    }

    fn output_only(&self, field: &FieldDescriptor) -> bool {
        self.behaviors(field).contains(&OUTPUT_ONLY)
    }

    fn behaviors(&self, field: &FieldDescriptor) -> Vec<i32> {
        let Some(extension) = &self.field_behavior else {
            return Vec::new();
        };
        let options = field.options();
        if !options.has_extension(extension) {
            return Vec::new();
        }
        match options.get_extension(extension).as_ref() {
            Value::List(values) => values.iter().filter_map(Value::as_enum_number).collect(),
            _ => Vec::new(),
        }
    }

    /// A field's schema, lists and maps included.
    fn field_schema(&mut self, field: &FieldDescriptor, side: Side) -> Json {
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                return json!({ "type": "object" });
            };
            let value = entry.map_entry_value_field();
            return json!({ "type": "object", "additionalProperties": self.value_schema(&value, side) });
        }
        let item = self.value_schema(field, side);
        if field.is_list() {
            let mut list = json!({ "type": "array", "items": item });
            if side != Side::Reply
                && let Some(rules) = request_rules(field)
            {
                for check in &rules.list {
                    match check {
                        Check::MinItems(n) => list["minItems"] = json!(n),
                        Check::MaxItems(n) => list["maxItems"] = json!(n),
                        Check::Unique => list["uniqueItems"] = json!(true),
                        _ => {}
                    }
                }
            }
            list
        } else {
            item
        }
    }

    /// The schema of one value of `field` (an element, for lists), with its
    /// request rules on the request side.
    fn value_schema(&mut self, field: &FieldDescriptor, side: Side) -> Json {
        let mut schema = self.plain_value_schema(field, side);
        let rules = request_rules(field).filter(|_| side != Side::Reply);
        if let (Some(rules), Json::Object(object)) = (rules, &mut schema) {
            apply_rules(field, &rules.value, object);
            // An unset (empty) value is not checked, so the document allows
            // it, unless the field is required (then the domain refuses it:
            // a product's name may be left out of an update, not a creation).
            if rules.ignore_if_zero
                && (side == Side::Update || !self.behaviors(field).contains(&REQUIRED))
                && let Some(pattern) = object.get("pattern").and_then(Json::as_str).map(str::to_owned)
            {
                object.remove("format");
                object.insert("pattern".into(), json!(format!("^$|{pattern}")));
            }
        }
        schema
    }

    fn plain_value_schema(&mut self, field: &FieldDescriptor, side: Side) -> Json {
        match field.kind() {
            Kind::Message(message) => self.message_ref(&message, side),
            Kind::Enum(enumeration) => json!({
                "type": "string",
                "enum": enumeration.values().map(|v| v.name().to_owned()).collect::<Vec<_>>(),
            }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({ "type": "integer", "format": "int32", "minimum": i32::MIN, "maximum": i32::MAX })
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({ "type": "integer", "format": "int32", "minimum": 0, "maximum": u32::MAX })
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({ "type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$" })
            }
            Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "format": "uint64", "pattern": "^[0-9]{1,20}$" }),
            Kind::Float | Kind::Double => json!({ "type": "number" }),
        }
    }

    /// A reference to a message's schema (written once in components), or
    /// the JSON form of a well-known type.
    /// A request's copy of a message with rules is a schema of its own
    /// (`<name>.Input`): the rules hold for what clients send, not for what
    /// the services reply (a balance of 0 is a fine reply, not a deposit).
    fn message_ref(&mut self, message: &MessageDescriptor, side: Side) -> Json {
        if let Some(schema) = well_known_schema(message) {
            return schema;
        }
        let side = match side {
            // What an update holds is written out in full.
            Side::Request | Side::Update if has_rules(message) => Side::Request,
            _ => Side::Reply,
        };
        let name = schema_name(message, side);
        if self.queued.insert(name.clone()) {
            self.pending.push((message.clone(), side));
        }
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }

    fn object_schema(&mut self, message: &MessageDescriptor, side: Side) -> Json {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for field in message.fields() {
            let mut schema = self.field_schema(&field, side);
            let behaviors = self.behaviors(&field);
            if let Json::Object(object) = &mut schema {
                if let Some(text) = comments(&field.parent_file(), field.path()) {
                    // A $ref takes no siblings in older tools; 3.1 allows them.
                    object.insert("description".into(), json!(text));
                }
                if behaviors.contains(&OUTPUT_ONLY) {
                    object.insert("readOnly".into(), json!(true));
                }
            }
            let must = match side {
                Side::Request => self.required_in_request(&field),
                // Only what the rules themselves refuse to leave unset.
                Side::Update => request_rules(&field).is_some_and(|r| r.refuses_unset(&field)),
                Side::Reply => behaviors.contains(&REQUIRED),
            };
            if must {
                required.push(json!(field.json_name()));
            }
            properties.insert(field.json_name().to_owned(), schema);
        }
        let mut schema = Map::new();
        schema.insert("type".into(), json!("object"));
        if let Some(text) = comments(&message.parent_file(), message.path()) {
            schema.insert("description".into(), json!(text));
        }
        schema.insert("properties".into(), Json::Object(properties));
        if !required.is_empty() {
            schema.insert("required".into(), Json::Array(required));
        }
        schema.insert("additionalProperties".into(), json!(false));
        if side != Side::Reply {
            // The services refuse to start on a message rule they cannot read.
            let conditions = RequiredWhen::of(message).unwrap_or_default();
            let clauses: Vec<Json> = conditions.iter().map(required_when).collect();
            match clauses.len() {
                0 => {}
                1 => {
                    if let Some(Json::Object(clause)) = clauses.into_iter().next() {
                        schema.extend(clause);
                    }
                }
                _ => {
                    schema.insert("allOf".into(), Json::Array(clauses));
                }
            }
        }
        Json::Object(schema)
    }

    /// Writes the schema of every referenced message.
    fn finish(mut self) -> Map<String, Json> {
        while let Some((message, side)) = self.pending.pop() {
            let schema = self.object_schema(&message, side);
            self.schemas.insert(schema_name(&message, side), schema);
        }
        self.schemas
    }
}

/// The component name of `message` as used on `side`.
fn schema_name(message: &MessageDescriptor, side: Side) -> String {
    match side {
        Side::Request | Side::Update => format!("{}.Input", message.full_name()),
        Side::Reply => message.full_name().to_owned(),
    }
}

/// A message rule as JSON Schema: `if` the field holds the value, `then`
/// the other must be sent and not empty.
fn required_when(condition: &RequiredWhen) -> Json {
    let value = match condition.when.kind() {
        Kind::Enum(enumeration) => i32::try_from(condition.equals)
            .ok()
            .and_then(|n| enumeration.get_value(n))
            .map_or(json!(condition.equals), |v| json!(v.name())),
        _ => json!(condition.equals),
    };
    let when = condition.when.json_name();
    let field = condition.field.json_name();
    json!({
        "if": { "properties": { when: { "const": value } }, "required": [when] },
        "then": { "properties": { field: { "minLength": 1 } }, "required": [field] },
    })
}

/// A field's request rules. The services refuse to start on a rule they do
/// not understand, so one that fails to read here never reaches a client.
fn request_rules(field: &FieldDescriptor) -> Option<FieldRules> {
    FieldRules::of(field).ok().flatten()
}

/// Whether `message`, or a message it holds, declares request rules.
fn has_rules(message: &MessageDescriptor) -> bool {
    let mut seen: Vec<MessageDescriptor> = Vec::new();
    let mut pending = vec![message.clone()];
    while let Some(message) = pending.pop() {
        if !RequiredWhen::of(&message).unwrap_or_default().is_empty() {
            return true;
        }
        for field in message.fields() {
            if request_rules(&field).is_some() {
                return true;
            }
            if let Kind::Message(inner) = field.kind()
                && !seen.contains(&inner)
            {
                seen.push(inner.clone());
                pending.push(inner);
            }
        }
    }
    false
}

/// The JSON Schema keywords of a value's rules.
fn apply_rules(field: &FieldDescriptor, checks: &[Check], schema: &mut Map<String, Json>) {
    let int64 = matches!(field.kind(), Kind::Int64 | Kind::Sint64 | Kind::Sfixed64);
    for check in checks {
        match check {
            Check::MinLen(n) => {
                schema.insert("minLength".into(), json!(n));
            }
            Check::MaxLen(n) => {
                schema.insert("maxLength".into(), json!(n));
            }
            Check::Pattern(re) => {
                schema.insert("pattern".into(), json!(ecma_pattern(re.as_str())));
            }
            Check::Uuid => {
                schema.insert("format".into(), json!("uuid"));
                schema.insert("pattern".into(), json!(UUID_PATTERN));
            }
            Check::Gte(n) => {
                schema.insert("minimum".into(), json!(n));
            }
            Check::Gt(n) => {
                schema.insert("exclusiveMinimum".into(), json!(n));
            }
            Check::Lte(n) => {
                schema.insert("maximum".into(), json!(n));
            }
            Check::Lt(n) => {
                schema.insert("exclusiveMaximum".into(), json!(n));
            }
            Check::In(allowed) => {
                schema.insert("enum".into(), json!(allowed));
            }
            Check::MaskIn(allowed) => {
                // The JSON form: comma-separated lowerCamelCase paths.
                let names: Vec<String> = allowed.iter().map(|path| lower_camel(path)).collect();
                let one = format!("(?:{})", names.join("|"));
                schema.insert("pattern".into(), json!(format!("^(?:{one}(?:,{one})*)?$")));
            }
            Check::NotIn(numbers) => {
                if let Kind::Enum(enumeration) = field.kind() {
                    let allowed: Vec<String> = enumeration
                        .values()
                        .filter(|v| !numbers.contains(&i64::from(v.number())))
                        .map(|v| v.name().to_owned())
                        .collect();
                    schema.insert("enum".into(), json!(allowed));
                } else {
                    schema.insert("anyOf".into(), Json::Array(ranges_without(checks, numbers)));
                }
            }
            Check::DefinedOnly | Check::MinItems(_) | Check::MaxItems(_) | Check::Unique => {}
        }
    }
    // A bounded 64-bit integer is written as a JSON number (the proto3 JSON
    // mapping reads either), so its bounds can be said.
    let bounded = checks
        .iter()
        .any(|c| matches!(c, Check::Gte(_) | Check::Gt(_) | Check::Lte(_) | Check::Lt(_)));
    if int64 && bounded {
        schema.insert("type".into(), json!("integer"));
        schema.remove("pattern");
    }
}

/// The integer ranges a value's bounds allow, with `refused` cut out, as
/// `anyOf` branches (fuzzers and validators handle these better than `not`).
fn ranges_without(checks: &[Check], refused: &[i64]) -> Vec<Json> {
    let mut low = i64::MIN;
    let mut high = i64::MAX;
    for check in checks {
        match check {
            Check::Gte(n) => low = low.max(*n),
            Check::Gt(n) => low = low.max(n.saturating_add(1)),
            Check::Lte(n) => high = high.min(*n),
            Check::Lt(n) => high = high.min(n.saturating_sub(1)),
            _ => {}
        }
    }
    let mut refused: Vec<i64> = refused.iter().copied().filter(|n| (low..=high).contains(n)).collect();
    refused.sort_unstable();
    let mut ranges = Vec::new();
    let mut start = low;
    for n in refused {
        if n > start {
            ranges.push(json!({ "minimum": start, "maximum": n - 1 }));
        }
        start = n.saturating_add(1);
    }
    if start <= high {
        ranges.push(json!({ "minimum": start, "maximum": high }));
    }
    ranges
}

/// An RE2 pattern (protovalidate's dialect) as ECMA-262 (JSON Schema's)
/// writes it: RE2's `\x{2000}` is ECMA's `\u2000`. Keel's patterns use no
/// other construct the two spell differently.
fn ecma_pattern(re2: &str) -> String {
    static CODE_POINT: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        #[allow(clippy::unwrap_used)] // a constant expression, covered by the tests
        regex::Regex::new(r"\\x\{([0-9a-fA-F]{4})\}").unwrap()
    });
    CODE_POINT.replace_all(re2, r"\u$1").into_owned()
}

/// `display_name` as proto3 JSON spells it in a FieldMask: `displayName`.
fn lower_camel(path: &str) -> String {
    path.split('.')
        .map(|segment| {
            let mut out = String::with_capacity(segment.len());
            let mut upper = false;
            for c in segment.chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    out.extend(c.to_uppercase());
                    upper = false;
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// A hyphenated UUID, as `string.uuid` accepts it.
const UUID_PATTERN: &str = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

fn well_known(message: &MessageDescriptor) -> bool {
    well_known_schema(message).is_some()
}

/// The proto3 JSON forms of the well-known types.
fn well_known_schema(message: &MessageDescriptor) -> Option<Json> {
    let schema = match message.full_name() {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        // Up to 11 digits of seconds: the proto3 JSON range is about 3.2 * 10^11.
        "google.protobuf.Duration" => json!({ "type": "string", "pattern": "^-?[0-9]{1,11}(\\.[0-9]{1,9})?s$" }),
        "google.protobuf.FieldMask" => {
            json!({ "type": "string", "description": "Comma-separated lowerCamelCase field paths." })
        }
        "google.protobuf.Empty" => json!({ "type": "object", "additionalProperties": false }),
        "google.protobuf.Struct" => json!({ "type": "object" }),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({ "type": "array" }),
        "google.protobuf.StringValue" => json!({ "type": "string" }),
        "google.protobuf.BoolValue" => json!({ "type": "boolean" }),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => json!({ "type": "integer" }),
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({ "type": "string", "pattern": "^-?[0-9]+$" })
        }
        "google.protobuf.FloatValue" | "google.protobuf.DoubleValue" => json!({ "type": "number" }),
        "google.protobuf.BytesValue" => json!({ "type": "string", "contentEncoding": "base64" }),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": { "@type": { "type": "string" } },
            "required": ["@type"],
        }),
        _ => return None,
    };
    Some(schema)
}

/// google.rpc.Status as the gateway writes it.
fn status_schema() -> Json {
    json!({
        "type": "object",
        "description": "An error: the gRPC status code, a message for developers, and typed details \
            (google.rpc.ErrorInfo with a stable `reason`, BadRequest field violations, RetryInfo, ...).",
        "properties": {
            "code": { "type": "integer", "format": "int32", "description": "The google.rpc.Code value." },
            "message": { "type": "string" },
            "details": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": { "@type": { "type": "string" } },
                    "required": ["@type"],
                },
            },
        },
        "required": ["code", "message", "details"],
    })
}

/// The leading comment of the element at `path` in `file`, if any.
fn comments(file: &FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let location = info.location.iter().find(|location| location.path == path)?;
    let text = location.leading_comments.as_deref()?.trim();
    let joined = text.lines().map(str::trim).collect::<Vec<_>>().join(" ");
    (!joined.is_empty()).then_some(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Json {
        let descriptors = Descriptors::load().expect("descriptors");
        let routes = RouteTable::from_descriptors(&descriptors).expect("routes");
        document(&descriptors, &routes)
    }

    #[test]
    fn every_route_is_an_operation_with_its_security() {
        let doc = doc();
        let login = &doc["paths"]["/v1/auth:login"]["post"];
        assert_eq!(login["operationId"], "AuthService_Login");
        assert_eq!(login["security"], json!([]));
        assert_eq!(
            login["requestBody"]["content"]["application/json"]["schema"]["required"],
            json!(["email", "password"])
        );
        let balance = &doc["paths"]["/v1/accounts/{account_id}/balance"]["get"];
        assert_eq!(balance["security"], json!([{ "bearer": [] }]));
        assert_eq!(balance["parameters"][0]["name"], "account_id");
        assert_eq!(balance["parameters"][0]["in"], "path");
        let update = &doc["paths"]["/v1/accounts/{account_id}"]["patch"];
        let names: Vec<&str> = update["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(names, ["account_id", "updateMask"]);
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        // Internal RPCs have no route, so neither they nor their messages show.
        assert!(!doc.to_string().contains("VoidDebit"), "VoidDebit is internal");
    }

    #[test]
    fn message_names_become_aip_snake_case() {
        for (name, snake) in [
            ("Product", "product"),
            ("WebhookEndpoint", "webhook_endpoint"),
            ("HTTPBody", "http_body"),
            ("Oauth2Client", "oauth2_client"),
        ] {
            assert_eq!(snake_case(name), snake);
        }
    }

    #[test]
    fn a_reply_holding_a_resource_links_to_the_routes_its_id_names() {
        let doc = doc();
        let links = &doc["paths"]["/v1/products"]["post"]["responses"]["200"]["links"];
        let mut targets: Vec<&str> = links
            .as_object()
            .expect("CreateProduct's links")
            .keys()
            .map(String::as_str)
            .collect();
        targets.sort_unstable();
        assert_eq!(
            targets,
            [
                "OrdersService_AdjustStock",
                "OrdersService_GetProduct",
                "OrdersService_UpdateProduct"
            ]
        );
        assert_eq!(
            links["OrdersService_GetProduct"]["parameters"],
            json!({ "product_id": "$response.body#/product/id" })
        );
        let order = &doc["paths"]["/v1/orders"]["post"]["responses"]["200"]["links"];
        assert_eq!(
            order["OrdersService_CancelOrder"]["parameters"],
            json!({ "order_id": "$response.body#/order/id" })
        );
        let endpoint = &doc["paths"]["/v1/webhookEndpoints"]["post"]["responses"]["200"]["links"];
        assert_eq!(
            endpoint["NotificationsService_DeleteWebhookEndpoint"]["parameters"],
            json!({ "webhook_endpoint_id": "$response.body#/webhookEndpoint/id" })
        );
        // A list is not one resource, and nothing links from a deletion.
        assert!(doc["paths"]["/v1/products"]["get"]["responses"]["200"]["links"].is_null());
        assert!(
            doc["paths"]["/v1/webhookEndpoints/{webhook_endpoint_id}"]["delete"]["responses"]["200"]["links"].is_null()
        );
    }

    #[test]
    fn streams_document_events_their_resume_header_and_websocket() {
        let doc = doc();
        let stream = &doc["paths"]["/v1/notifications:stream"]["get"];
        assert!(stream["responses"]["200"]["content"]["text/event-stream"].is_object());
        assert!(
            stream["responses"]["101"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("websocket"))
        );
        let parameters = stream["parameters"].as_array().expect("parameters");
        let header = parameters
            .iter()
            .find(|p| p["in"] == "header")
            .expect("a header parameter");
        assert_eq!(header["name"], "Last-Event-ID");
        assert!(parameters.iter().any(|p| p["name"] == "afterNotificationId"));
        let unary = &doc["paths"]["/v1/accounts/{account_id}/balance"]["get"];
        assert!(unary["responses"]["101"].is_null());
    }

    #[test]
    fn request_schemas_carry_the_protos_rules() {
        let doc = doc();
        let register = &doc["paths"]["/v1/auth:register"]["post"]["requestBody"];
        assert_eq!(register["required"], true);
        let schema = &register["content"]["application/json"]["schema"]["properties"];
        assert_eq!(schema["password"]["minLength"], 8);
        assert!(schema["email"]["pattern"].as_str().is_some_and(|p| p.contains('@')));
        assert_eq!(schema["email"]["maxLength"], 254);
        let sessions = &doc["paths"]["/v1/auth/sessions"]["get"]["parameters"];
        let page_size = sessions
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "pageSize"))
            .expect("pageSize");
        assert_eq!(page_size["schema"]["minimum"], 0);
        let revoke = &doc["paths"]["/v1/auth/sessions/{session_id}:revoke"]["post"]["parameters"][0];
        assert_eq!(revoke["schema"]["format"], "uuid");
        assert_eq!(revoke["schema"]["pattern"], UUID_PATTERN);
        let dead_letters = &doc["paths"]["/v1/deadLetters"]["get"]["parameters"];
        let endpoint = dead_letters
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "webhookEndpointId"))
            .expect("webhookEndpointId");
        assert_eq!(
            endpoint["schema"]["pattern"],
            format!("^$|{UUID_PATTERN}"),
            "optional: empty is fine"
        );
        let schemas = &doc["components"]["schemas"];
        // The rules hold for what is sent, not for replies.
        let money_in = &schemas["keel.common.v1.Money.Input"]["properties"];
        assert_eq!(money_in["amountMinor"]["exclusiveMinimum"], 0);
        assert_eq!(money_in["currencyCode"]["pattern"], "^[A-Z]{3}$");
        assert!(schemas["keel.common.v1.Money"]["properties"]["amountMinor"]["exclusiveMinimum"].is_null());
        let roles = &doc["paths"]["/v1/auth/users/{user_id}:setRoles"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["properties"]["roles"];
        assert_eq!(roles["minItems"], 1);
        assert!(
            !roles["items"]["enum"]
                .as_array()
                .expect("enum")
                .iter()
                .any(|v| v == "ROLE_UNSPECIFIED")
        );
    }

    #[test]
    fn what_leaving_out_would_break_is_required_and_updates_may_leave_out() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        // amount > 0 and a currency pattern: neither may be left out.
        assert_eq!(
            schemas["keel.common.v1.Money.Input"]["required"],
            json!(["amountMinor", "currencyCode"])
        );
        // Creating a product needs its name and price; updating it does not.
        let product_in = &schemas["keel.orders.v1.Product.Input"];
        assert_eq!(product_in["required"], json!(["name", "price"]));
        // RE2's \x{1680} is written as ECMA-262's \u1680.
        let name = product_in["properties"]["name"]["pattern"].as_str().unwrap_or_default();
        assert!(name.contains("\\u1680") && !name.contains("\\x{"), "{name}");
        let update =
            &doc["paths"]["/v1/products/{product_id}"]["patch"]["requestBody"]["content"]["application/json"]["schema"];
        assert!(update["required"].is_null(), "{update}");
        assert!(
            update["properties"]["name"]["pattern"]
                .as_str()
                .is_some_and(|p| p.starts_with("^$|"))
        );
        // A required query parameter, and an update mask limited to its paths.
        let verify = &doc["paths"]["/v1/auth:verifyEmail"]["get"]["parameters"][0];
        assert_eq!((&verify["name"], &verify["required"]), (&json!("token"), &json!(true)));
        let mask = doc["paths"]["/v1/accounts/{account_id}"]["patch"]["parameters"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "updateMask"))
            .expect("updateMask")["schema"]["pattern"]
            .clone();
        assert_eq!(mask, "^(?:(?:displayName)(?:,(?:displayName))*)?$");
    }

    #[test]
    fn message_rules_lists_and_excluded_numbers_are_published() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        let order = &doc["paths"]["/v1/orders"]["post"]["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(
            order["if"]["properties"]["paymentMethod"]["const"],
            "PAYMENT_METHOD_EXTERNAL"
        );
        assert_eq!(order["then"]["required"], json!(["externalPaymentMethodId"]));
        assert_eq!(order["properties"]["items"]["minItems"], 1);
        assert_eq!(order["properties"]["items"]["maxItems"], 100);
        let adjust = &doc["paths"]["/v1/products/{product_id}:adjustStock"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["properties"]["delta"];
        assert_eq!(
            adjust["anyOf"],
            json!([
                { "minimum": -1_000_000_000_000_i64, "maximum": -1 },
                { "minimum": 1, "maximum": 1_000_000_000_000_i64 },
            ])
        );
        let channels = &doc["paths"]["/v1/notificationPreferences/{user_id}"]["patch"]["requestBody"]["content"]["application/json"]
            ["schema"]["properties"]["defaultChannels"];
        assert_eq!(channels["uniqueItems"], true);
        let endpoint = &schemas["keel.notifications.v1.WebhookEndpoint.Input"]["properties"]["eventTypes"]["items"];
        assert!(
            endpoint["enum"]
                .as_array()
                .is_some_and(|e| e.contains(&json!("order.paid")))
        );
    }

    #[test]
    fn schemas_follow_the_proto3_json_mapping() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        let money = &schemas["keel.common.v1.Money"]["properties"];
        assert_eq!(money["amountMinor"]["type"], "string", "int64 is a string");
        let transaction = &schemas["keel.accounts.v1.Transaction"]["properties"];
        assert_eq!(transaction["kind"]["enum"][1], "TRANSACTION_KIND_DEPOSIT");
        assert_eq!(transaction["createTime"]["format"], "date-time");
        assert!(schemas["google.rpc.Status"].is_object());
    }
}
