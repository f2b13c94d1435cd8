//! Messages and fields as JSON Schema, following the proto3 JSON mapping;
//! on the request side with the protos' rules and `google.api.field_behavior`.

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor, Value};
use serde_json::{Map, Value as Json, json};

use keel_platform::serve::rules::{Check, FieldText, RequiredWhen};

use super::{
    Builder, comments,
    rules::{apply_rules, has_rules, request_rules, required_when},
    well_known::well_known_schema,
};

/// `google.api.FieldBehavior` values the document uses.
const REQUIRED: i32 = 2;
const OUTPUT_ONLY: i32 = 3;

/// Where a schema is used: a request's schemas carry the protos' request
/// rules (buf.validate), which the services enforce on what they receive;
/// replies are described as they are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Request,
    /// The resource in an update (PATCH): fields left out are unchanged,
    /// so only what the rules refuse to leave unset is required.
    Update,
    Reply,
}

impl Builder {
    /// Whether a request must set `field`: it is REQUIRED (AIP-203), or
    /// leaving it unset breaks one of its rules.
    pub(super) fn required_in_request(&self, field: &FieldDescriptor) -> bool {
        self.behaviors(field).contains(&REQUIRED) || request_rules(field).is_some_and(|r| r.refuses_unset(field))
    }

    pub(super) fn output_only(&self, field: &FieldDescriptor) -> bool {
        self.behaviors(field).contains(&OUTPUT_ONLY)
    }

    pub(super) fn behaviors(&self, field: &FieldDescriptor) -> Vec<i32> {
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
    pub(super) fn field_schema(&mut self, field: &FieldDescriptor, side: Side) -> Json {
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
    pub(super) fn value_schema(&mut self, field: &FieldDescriptor, side: Side) -> Json {
        let mut schema = self.plain_value_schema(field, side);
        if side != Side::Reply
            && let (Some(example), Json::Object(object)) = (FieldText::of(field).example, &mut schema)
        {
            object.insert("examples".into(), json!([typed_example(object, example)]));
        }
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
    pub(super) fn message_ref(&mut self, message: &MessageDescriptor, side: Side) -> Json {
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

    pub(super) fn object_schema(&mut self, message: &MessageDescriptor, side: Side) -> Json {
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
            let mut clauses: Vec<Json> = conditions.iter().map(required_when).collect();
            clauses.extend(oneof_clauses(message));
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
}

/// A oneof's members exclude each other (proto3 JSON refuses a message that
/// sets two): one `not required` clause per pair; and a oneof marked
/// `(buf.validate.oneof).required` needs one of them.
fn oneof_clauses(message: &MessageDescriptor) -> Vec<Json> {
    let required_rule = message.parent_pool().get_extension_by_name("buf.validate.oneof");
    let mut clauses = Vec::new();
    for oneof in message.oneofs().filter(|oneof| !oneof.is_synthetic()) {
        let names: Vec<String> = oneof.fields().map(|field| field.json_name().to_owned()).collect();
        for (i, first) in names.iter().enumerate() {
            for second in &names[i + 1..] {
                clauses.push(json!({ "not": { "required": [first, second] } }));
            }
        }
        let options = oneof.options();
        let required = required_rule.as_ref().is_some_and(|rule| {
            options.has_extension(rule)
                && matches!(
                    options.get_extension(rule).as_ref(),
                    prost_reflect::Value::Message(rules)
                        if rules.get_field_by_name("required").and_then(|v| v.as_bool()) == Some(true)
                )
        });
        if required {
            let any: Vec<Json> = names.iter().map(|name| json!({ "required": [name] })).collect();
            clauses.push(json!({ "anyOf": any }));
        }
    }
    clauses
}

/// The component name of `message` as used on `side`.
pub(super) fn schema_name(message: &MessageDescriptor, side: Side) -> String {
    match side {
        Side::Request | Side::Update => format!("{}.Input", message.full_name()),
        Side::Reply => message.full_name().to_owned(),
    }
}

/// A field's example as its schema's type: a number for an integer, else
/// the text as it is.
fn typed_example(schema: &Map<String, Json>, example: String) -> Json {
    match schema.get("type").and_then(Json::as_str) {
        Some("integer") => example.parse::<i64>().map_or(Json::String(example), Json::from),
        _ => Json::String(example),
    }
}
