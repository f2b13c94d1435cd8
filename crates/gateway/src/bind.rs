//! Request binding: the path variables, the query string and the JSON body
//! become one request message, following the `google.api.http` rules.
//!
//! The three sources are merged into one JSON object that the proto3 JSON
//! mapping then reads in one pass, so every field, nested or not, is parsed
//! and checked the same way, and unknown fields are refused. Binding is exact:
//! a body that is not a JSON object is refused, a field that both the path
//! and the body set must hold the same value in both (and a top-level field
//! of a `*` body, which the document leaves out of the body, must not be
//! there at all), so nothing a client sends is silently replaced.

use http::StatusCode;
use percent_encoding::percent_decode_str;
use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind};
use serde_json::{Map, Value};

use keel_platform::serve::rules::FieldRules;

use crate::{descriptors::settable_field_path, error::ApiError, routes::Route, template::Binding};

/// What a request brings to binding.
#[derive(Debug)]
pub struct Input<'a> {
    /// The path variables the route matched.
    pub bindings: Vec<Binding>,
    /// The raw query string, if any.
    pub query: Option<&'a str>,
    /// The `content-type` header, if any.
    pub content_type: Option<&'a str>,
    /// The request body (empty when none was sent).
    pub body: &'a [u8],
}

/// Builds the request message for `route` from `input`.
pub fn bind(route: &Route, input: Input<'_>) -> Result<DynamicMessage, ApiError> {
    let request = route.rpc.input();
    let mut root = Map::new();
    match route.body.as_deref() {
        None => {}
        Some("*") => {
            if let Some(value) = body_json(&input)? {
                match value {
                    Value::Object(fields) => root = fields,
                    _ => return Err(ApiError::bad_request("the request body must be a JSON object")),
                }
            }
        }
        Some(field) => {
            let field = request
                .get_field_by_name(field)
                .ok_or_else(|| ApiError::bad_request(format!("the route's body field {field} is unknown")))?;
            let raw = matches!(field.kind(), Kind::Message(m) if m.full_name() == HTTP_BODY);
            // A google.api.HttpBody takes the body as it came, byte for byte
            // (a signed webhook is verified over exactly these bytes).
            let value = match raw {
                true => Some(http_body(&input)),
                false => body_json(&input)?,
            };
            let message = matches!(field.kind(), Kind::Message(_)) && !field.is_list() && !field.is_map();
            if !raw && message && value.as_ref().is_some_and(|value| !value.is_object()) {
                return Err(ApiError::bad_request("the request body must be a JSON object"));
            }
            // The path may fill in part of a required body field (the
            // account's id); the body itself must still be sent.
            let required = FieldRules::of(&field)
                .ok()
                .flatten()
                .is_some_and(|rules| rules.required);
            if !raw && required && value.is_none() {
                return Err(ApiError::bad_field(
                    field.name(),
                    "is required: send it as the request body",
                ));
            }
            if let Some(value) = value {
                root.insert(field.json_name().to_owned(), value);
            }
        }
    }

    let mut bound: Vec<Vec<FieldDescriptor>> = Vec::new();
    for binding in &input.bindings {
        let path = settable_field_path(&request, &binding.field_path)
            .map_err(|description| ApiError::bad_field(&binding.field_path.join("."), description))?;
        let value = scalar(&path, &binding.value)?;
        if route.body.as_deref() == Some("*") && path.len() == 1 && lookup(&root, &path)?.is_some() {
            return Err(ApiError::bad_field(
                &dotted(&path),
                "is set by the path; leave it out of the body",
            ));
        }
        if let Some(sent) = lookup(&root, &path)?
            && !agrees(sent, &value)
        {
            return Err(ApiError::bad_field(
                &dotted(&path),
                format!(
                    "is {:?} in the path; the body must hold the same value or leave it out",
                    binding.value
                ),
            ));
        }
        set(&mut root, &path, value, false);
        bound.push(path);
    }

    if let Some(query) = input.query.filter(|q| !q.is_empty()) {
        if route.body.as_deref() == Some("*") {
            return Err(ApiError::bad_request(
                "this route takes its fields in the body; the query string must be empty",
            ));
        }
        for (name, value) in query_pairs(query)? {
            let segments: Vec<String> = name.split('.').map(str::to_owned).collect();
            let path = settable_field_path(&request, &segments)
                .map_err(|description| ApiError::bad_field(&name, description))?;
            if bound.iter().any(|b| same_field(b, &path)) {
                return Err(ApiError::bad_field(&name, "is set by the path"));
            }
            if route.body.as_deref() == path.first().map(FieldDescriptor::name) {
                return Err(ApiError::bad_field(&name, "is set by the body"));
            }
            set(&mut root, &path, scalar(&path, &value)?, true);
        }
    }

    DynamicMessage::deserialize_with_options(request, Value::Object(root), &DeserializeOptions::new())
        .map_err(|err| ApiError::bad_request(format!("invalid request: {err}")))
}

/// The message that carries a body unparsed.
pub const HTTP_BODY: &str = "google.api.HttpBody";

/// The body as the JSON form of a `google.api.HttpBody` (bytes in base64).
fn http_body(input: &Input<'_>) -> Value {
    use base64::Engine as _;
    serde_json::json!({
        "contentType": input.content_type.unwrap_or_default(),
        "data": base64::engine::general_purpose::STANDARD.encode(input.body),
    })
}

/// The body as JSON, or None when there is none.
fn body_json(input: &Input<'_>) -> Result<Option<Value>, ApiError> {
    if input.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if !input.content_type.is_some_and(is_json) {
        return Err(
            ApiError::bad_request("request bodies must be JSON (content-type: application/json)")
                .with_http_status(StatusCode::UNSUPPORTED_MEDIA_TYPE),
        );
    }
    let value: Value = serde_json::from_slice(input.body)
        .map_err(|err| ApiError::bad_request(format!("the request body is not valid JSON: {err}")))?;
    // The proto3 JSON mapping reads `null` as "unset", but the document
    // gives every field a type without null: leave a field out to unset it.
    // (No Keel message holds a google.protobuf.Value, where null is data.)
    if value.is_null() {
        return Err(ApiError::bad_request("the request body is null"));
    }
    if let Some(path) = null_at(&value) {
        return Err(ApiError::bad_field(
            path.trim_start_matches('.'),
            "is null; leave the field out instead",
        ));
    }
    Ok(Some(value))
}

/// Where the first `null` in `value` is (`.items[1].quantity`), if any. The
/// path is built only on the way out of a null, so a body without one costs
/// no allocation.
fn null_at(value: &Value) -> Option<String> {
    match value {
        Value::Null => Some(String::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| null_at(item).map(|rest| format!("[{i}]{rest}"))),
        Value::Object(fields) => fields
            .iter()
            .find_map(|(name, field)| null_at(field).map(|rest| format!(".{name}{rest}"))),
        _ => None,
    }
}

/// `application/json`, with or without parameters such as `charset=utf-8`.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// A path or query value as the JSON the field's mapping reads: booleans as
/// JSON booleans, everything else as a string (proto3 JSON accepts numbers,
/// enums, timestamps and field masks as strings).
fn scalar(path: &[FieldDescriptor], value: &str) -> Result<Value, ApiError> {
    let Some(field) = path.last() else {
        return Ok(Value::String(value.to_owned()));
    };
    match field.kind() {
        Kind::Bool => match value {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(ApiError::bad_field(
                &dotted(path),
                format!("must be true or false, not {value:?}"),
            )),
        },
        _ => Ok(Value::String(value.to_owned())),
    }
}

/// Sets the field at `path` in `root`, creating objects on the way and
/// replacing whatever the body held there (under either of its names).
/// Repeated fields collect every value when `append` is set.
fn set(root: &mut Map<String, Value>, path: &[FieldDescriptor], value: Value, append: bool) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut object = root;
    for field in parents {
        let key = field.json_name().to_owned();
        if field.name() != key
            && let Some(value) = object.remove(field.name())
        {
            object.insert(key.clone(), value);
        }
        let entry = object.entry(key).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(inner) = entry else {
            return;
        };
        object = inner;
    }
    let key = last.json_name().to_owned();
    let previous = object.remove(last.name()).or_else(|| object.remove(&key));
    let value = match (last.is_list(), append, previous) {
        (true, true, Some(Value::Array(mut values))) => {
            values.push(value);
            Value::Array(values)
        }
        (true, _, _) => Value::Array(vec![value]),
        (false, _, _) => value,
    };
    object.insert(key, value);
}

/// What the body holds at `path` (under either of its names), if anything.
/// A message on the way that the body sent as something other than an
/// object is refused rather than replaced.
fn lookup<'a>(root: &'a Map<String, Value>, path: &[FieldDescriptor]) -> Result<Option<&'a Value>, ApiError> {
    let Some((last, parents)) = path.split_last() else {
        return Ok(None);
    };
    let mut object = root;
    for (depth, field) in parents.iter().enumerate() {
        match object.get(field.json_name()).or_else(|| object.get(field.name())) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(inner)) => object = inner,
            Some(_) => return Err(ApiError::bad_field(&dotted(&path[..=depth]), "must be a JSON object")),
        }
    }
    Ok(object
        .get(last.json_name())
        .or_else(|| object.get(last.name()))
        .filter(|value| !value.is_null()))
}

/// Whether a body's value is the path's: the same JSON, or the same number
/// written as a number rather than a string.
fn agrees(sent: &Value, path: &Value) -> bool {
    match (sent, path) {
        (Value::Number(number), Value::String(text)) => number.to_string() == *text,
        _ => sent == path,
    }
}

fn same_field(a: &[FieldDescriptor], b: &[FieldDescriptor]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.full_name() == y.full_name())
}

fn dotted(path: &[FieldDescriptor]) -> String {
    path.iter().map(FieldDescriptor::name).collect::<Vec<_>>().join(".")
}

/// `application/x-www-form-urlencoded` pairs of a query string.
fn query_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

fn decode(part: &str) -> Result<String, ApiError> {
    let spaced = part.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| ApiError::bad_request("the query string is not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        descriptors::Descriptors,
        routes::{Resolved, RouteTable},
    };

    fn call(method: &str, uri: &str, body: &str) -> Result<serde_json::Value, (StatusCode, String)> {
        let table = RouteTable::from_descriptors(&Descriptors::load().expect("descriptors")).expect("routes");
        let (path, query) = uri.split_once('?').map_or((uri, None), |(p, q)| (p, Some(q)));
        let Resolved::Route(route, bindings) = table.resolve(method, path) else {
            panic!("{method} {path} has no route");
        };
        let input = Input {
            bindings,
            query,
            content_type: Some("application/json; charset=utf-8"),
            body: body.as_bytes(),
        };
        let descriptors = Descriptors::load().expect("descriptors");
        match bind(route, input) {
            Ok(message) => Ok(serde_json::to_value(&message).expect("JSON")),
            Err(err) => {
                let code = err.code();
                let response = err.into_response(&descriptors);
                Err((response.status(), format!("{code:?}")))
            }
        }
    }

    #[test]
    fn body_star_takes_the_whole_message_and_the_path_its_fields() {
        let bound = call(
            "POST",
            "/v1/accounts/me:deposit",
            r#"{"amount":{"amountMinor":"250","currencyCode":"USD"},"request_id":"r1"}"#,
        );
        let bound = bound.expect("bound");
        assert_eq!(bound["accountId"], "me");
        assert_eq!(bound["requestId"], "r1");
    }

    #[test]
    fn a_star_body_may_not_set_what_the_path_sets() {
        for body in [
            r#"{"accountId":"other","amount":{"amountMinor":"250","currencyCode":"USD"}}"#,
            r#"{"accountId":"me","amount":{"amountMinor":"250","currencyCode":"USD"}}"#,
            r#"{"account_id":{"x":1},"amount":{"amountMinor":"250","currencyCode":"USD"}}"#,
        ] {
            let (status, _) = call("POST", "/v1/accounts/me:deposit", body).expect_err(body);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        }
    }

    #[test]
    fn a_nested_field_the_path_sets_must_agree_with_the_body() {
        let bound = call(
            "PATCH",
            "/v1/accounts/me?updateMask=displayName",
            r#"{"id":"me","displayName":"Ada"}"#,
        )
        .expect("the same id in path and body");
        assert_eq!(bound["account"]["id"], "me");
        for body in [r#"{"id":"other"}"#, r#"{"id":{}}"#, r#"{"id":5}"#, r#"{"id":["me"]}"#] {
            let (status, _) = call("PATCH", "/v1/accounts/me?updateMask=displayName", body).expect_err(body);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        }
    }

    #[test]
    fn every_body_route_refuses_a_body_that_is_not_an_object() {
        let descriptors = Descriptors::load().expect("descriptors");
        let table = RouteTable::from_descriptors(&descriptors).expect("routes");
        let mut checked = 0;
        for route in table.routes() {
            let Some(body) = route.body.as_deref() else {
                continue;
            };
            let raw = route
                .rpc
                .input()
                .get_field_by_name(body)
                .is_some_and(|f| matches!(f.kind(), Kind::Message(m) if m.full_name() == HTTP_BODY));
            if raw {
                continue;
            }
            let uri = route.template.sample_path();
            for sent in ["[null, null]", "\"AAA\"", "0", "null", "true"] {
                let (status, code) = call(&route.method, &uri, sent).expect_err(&uri);
                assert_eq!(status, StatusCode::BAD_REQUEST, "{} {uri} {sent}: {code}", route.method);
            }
            checked += 1;
        }
        assert!(checked > 20, "only {checked} body routes");
    }

    #[test]
    fn a_named_body_field_merges_with_nested_path_variables_and_query() {
        let bound = call(
            "PATCH",
            "/v1/accounts/me?updateMask=displayName",
            r#"{"displayName":"Ada"}"#,
        )
        .expect("bound");
        assert_eq!(bound["account"]["id"], "me");
        assert_eq!(bound["account"]["displayName"], "Ada");
        assert_eq!(bound["updateMask"], "displayName");
    }

    #[test]
    fn query_parameters_fill_get_requests_by_either_name() {
        let bound = call("GET", "/v1/accounts/me/transactions?page_size=5&pageToken=abc", "").expect("bound");
        assert_eq!(bound["pageSize"], 5);
        assert_eq!(bound["pageToken"], "abc");
    }

    #[test]
    fn bad_input_is_a_4xx_never_a_5xx() {
        for (method, uri, body) in [
            ("POST", "/v1/auth:login", "{not json"),
            ("POST", "/v1/auth:login", "[1,2]"),
            ("POST", "/v1/auth:login", r#"{"email":5}"#),
            ("POST", "/v1/auth:login", r#"{"nosuchfield":"x"}"#),
            (
                "POST",
                "/v1/auth:register",
                r#"{"email":"a@example.com","password":"long enough","requestId":null}"#,
            ),
            ("POST", "/v1/orders", r#"{"requestId":"k","items":[null]}"#),
            ("POST", "/v1/auth:login?email=a", "{}"),
            ("GET", "/v1/accounts/me/transactions?pageSize=many", ""),
            ("GET", "/v1/accounts/me/transactions?nosuch=1", ""),
            ("GET", "/v1/accounts/me/transactions?accountId=x", ""),
            ("GET", "/v1/accounts/me/transactions?pageSize=99999999999999", ""),
        ] {
            let (status, code) = call(method, uri, body).expect_err(uri);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri} {body}: {code}");
        }
    }

    #[test]
    fn a_null_is_found_with_its_path() {
        let body = serde_json::json!({"requestId": "k", "items": [{"quantity": 1}, {"quantity": null}]});
        assert_eq!(null_at(&body).as_deref(), Some(".items[1].quantity"));
        assert_eq!(null_at(&serde_json::json!({"items": [{"quantity": 1}]})), None);
    }

    #[test]
    fn a_body_that_is_not_json_is_415() {
        let table = RouteTable::from_descriptors(&Descriptors::load().expect("descriptors")).expect("routes");
        let Resolved::Route(route, bindings) = table.resolve("POST", "/v1/auth:login") else {
            panic!("no login route");
        };
        let input = Input {
            bindings,
            query: None,
            content_type: Some("text/plain"),
            body: b"email=a",
        };
        let descriptors = Descriptors::load().expect("descriptors");
        let response = bind(route, input).expect_err("text/plain").into_response(&descriptors);
        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
