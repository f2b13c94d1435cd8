//! The protos' request rules (buf.validate, as keel_platform reads them) as
//! JSON Schema keywords, so the document says what the services refuse.

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value as Json, json};

use keel_platform::serve::rules::{Check, FieldRules, RequiredWhen};

/// A message rule as JSON Schema: `if` the field holds the value, `then`
/// the other must be sent and not empty.
pub(super) fn required_when(condition: &RequiredWhen) -> Json {
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
pub(super) fn request_rules(field: &FieldDescriptor) -> Option<FieldRules> {
    FieldRules::of(field).ok().flatten()
}

/// Whether `message`, or a message it holds, declares request rules.
pub(super) fn has_rules(message: &MessageDescriptor) -> bool {
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
pub(super) fn apply_rules(field: &FieldDescriptor, checks: &[Check], schema: &mut Map<String, Json>) {
    let int64 = matches!(field.kind(), Kind::Int64 | Kind::Sint64 | Kind::Sfixed64);
    for check in checks {
        match check {
            Check::MinLen(n) => {
                schema.insert("minLength".into(), json!(n));
            }
            Check::MaxLen(n) => {
                schema.insert("maxLength".into(), json!(n));
            }
            Check::Len(n) => {
                schema.insert("minLength".into(), json!(n));
                schema.insert("maxLength".into(), json!(n));
            }
            Check::Pattern { regex, .. } => {
                schema.insert("pattern".into(), json!(ecma_pattern(regex.as_str())));
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
pub(super) const UUID_PATTERN: &str = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
