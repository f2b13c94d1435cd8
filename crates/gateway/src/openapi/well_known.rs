//! The proto3 JSON forms of the well-known types (google.protobuf.*), and
//! google.rpc.Status as the gateway writes errors.

use prost_reflect::MessageDescriptor;
use serde_json::{Value as Json, json};

pub(super) fn well_known(message: &MessageDescriptor) -> bool {
    well_known_schema(message).is_some()
}

/// The proto3 JSON forms of the well-known types.
pub(super) fn well_known_schema(message: &MessageDescriptor) -> Option<Json> {
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
pub(super) fn status_schema() -> Json {
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
