//! Reading the rules: the `buf.validate` field and message options in the
//! descriptors, as [`FieldRules`] and [`RequiredWhen`]. A rule this module
//! does not know is an error, not a rule left unchecked.

use std::collections::HashMap;

use anyhow::{Context as _, bail};
use prost_reflect::{DynamicMessage, FieldDescriptor, MessageDescriptor, Value};

use super::model::{Check, FieldRules, FieldText, RequiredWhen, integer};

/// The protovalidate field option.
const FIELD_RULES: &str = "buf.validate.field";
/// Keel's own field option: what people are told about a field.
const FIELD_TEXT: &str = "keel.common.v1.field";
/// The protovalidate message option.
const MESSAGE_RULES: &str = "buf.validate.message";
/// `buf.validate.Ignore.IGNORE_IF_ZERO_VALUE`.
const IGNORE_IF_ZERO_VALUE: i32 = 1;
/// `buf.validate.Ignore.IGNORE_ALWAYS`.
const IGNORE_ALWAYS: i32 = 3;

impl FieldText {
    /// What `field`'s `keel.common.v1.field` option says (nothing when it
    /// has none).
    pub fn of(field: &FieldDescriptor) -> FieldText {
        let pool = field.parent_pool();
        let options = field.options();
        let Some(extension) = pool
            .get_extension_by_name(FIELD_TEXT)
            .filter(|e| options.has_extension(e))
        else {
            return FieldText::default();
        };
        let Value::Message(text) = options.get_extension(&extension).into_owned() else {
            return FieldText::default();
        };
        let said = |name: &str| {
            text.get_field_by_name(name)
                .and_then(|v| v.as_str().map(str::to_owned))
                .filter(|s| !s.is_empty())
        };
        FieldText {
            pattern_message: said("pattern_message"),
            example: said("example"),
        }
    }
}

impl FieldRules {
    /// The rules `field` declares, or None when it declares none.
    pub fn of(field: &FieldDescriptor) -> anyhow::Result<Option<FieldRules>> {
        let pool = field.parent_pool();
        let Some(extension) = pool.get_extension_by_name(FIELD_RULES) else {
            return Ok(None);
        };
        let options = field.options();
        if !options.has_extension(&extension) {
            return Ok(None);
        }
        let Value::Message(rules) = options.get_extension(&extension).into_owned() else {
            return Ok(None);
        };
        let mut parsed = FieldRules::default();
        let name = field.full_name().to_owned();
        let text = FieldText::of(field);
        for (rule, value) in rules.fields() {
            match (rule.name(), value) {
                ("required", Value::Bool(required)) => parsed.required = *required,
                ("ignore", Value::EnumNumber(IGNORE_IF_ZERO_VALUE)) => parsed.ignore_if_zero = true,
                ("ignore", Value::EnumNumber(IGNORE_ALWAYS)) => return Ok(None),
                ("repeated", Value::Message(repeated)) => {
                    for (rule, value) in repeated.fields() {
                        match (rule.name(), value) {
                            ("min_items", Value::U64(n)) => parsed.list.push(Check::MinItems(*n)),
                            ("max_items", Value::U64(n)) => parsed.list.push(Check::MaxItems(*n)),
                            ("unique", Value::Bool(true)) => parsed.list.push(Check::Unique),
                            ("items", Value::Message(items)) => {
                                parsed.value = value_checks(&name, &text, items)?;
                            }
                            (other, _) => bail!("{name}: the rule repeated.{other} is not supported"),
                        }
                    }
                }
                (_, Value::Message(typed)) => parsed.value = typed_checks(&name, &text, rule.name(), typed)?,
                (other, _) => bail!("{name}: the rule {other} is not supported"),
            }
        }
        Ok(Some(parsed))
    }
}

/// The typed rules of a repeated field's items (`repeated.items`).
fn value_checks(name: &str, text: &FieldText, items: &DynamicMessage) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    for (rule, value) in items.fields() {
        match value {
            Value::Message(typed) => checks.extend(typed_checks(name, text, rule.name(), typed)?),
            _ => bail!("{name}: the item rule {} is not supported", rule.name()),
        }
    }
    Ok(checks)
}

/// `string`, `int32`, `enum`, ... rules.
fn typed_checks(name: &str, text: &FieldText, kind: &str, rules: &DynamicMessage) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    for (rule, value) in rules.fields() {
        let check = match (kind, rule.name(), value) {
            ("string", "min_len", Value::U64(n)) => Check::MinLen(*n),
            ("string", "max_len", Value::U64(n)) => Check::MaxLen(*n),
            ("string", "len", Value::U64(n)) => Check::Len(*n),
            ("string", "pattern", Value::String(p)) => Check::Pattern {
                regex: compiled(p).with_context(|| format!("{name}: the pattern {p:?}"))?,
                message: text.pattern_message.clone().with_context(|| {
                    format!("{name}: a pattern needs (keel.common.v1.field).pattern_message, a sentence for people")
                })?,
            },
            ("string", "uuid", Value::Bool(true)) => Check::Uuid,
            ("string", "in", Value::List(names)) => {
                Check::In(names.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
            }
            ("int32" | "int64" | "uint32" | "uint64" | "sint32" | "sint64", "not_in", Value::List(numbers)) => {
                Check::NotIn(
                    numbers
                        .iter()
                        .filter_map(|n| integer(n).and_then(|n| i64::try_from(n).ok()))
                        .collect(),
                )
            }
            ("int32" | "int64" | "uint32" | "uint64" | "sint32" | "sint64", bound, value) => {
                let n = integer(value)
                    .and_then(|n| i64::try_from(n).ok())
                    .with_context(|| format!("{name}: {kind}.{bound} is out of range"))?;
                match bound {
                    "gte" => Check::Gte(n),
                    "gt" => Check::Gt(n),
                    "lte" => Check::Lte(n),
                    "lt" => Check::Lt(n),
                    other => bail!("{name}: the rule {kind}.{other} is not supported"),
                }
            }
            ("enum", "defined_only", Value::Bool(true)) => Check::DefinedOnly,
            ("field_mask", "in", Value::List(paths)) => {
                Check::MaskIn(paths.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
            }
            ("enum", "not_in", Value::List(numbers)) => {
                Check::NotIn(numbers.iter().filter_map(|n| n.as_i32().map(i64::from)).collect())
            }
            (kind, rule, _) => bail!("{name}: the rule {kind}.{rule} is not supported"),
        };
        checks.push(check);
    }
    Ok(checks)
}

impl RequiredWhen {
    /// The message rules `message` declares; any other CEL is refused.
    pub fn of(message: &MessageDescriptor) -> anyhow::Result<Vec<RequiredWhen>> {
        let pool = message.parent_pool();
        let Some(extension) = pool.get_extension_by_name(MESSAGE_RULES) else {
            return Ok(Vec::new());
        };
        let options = message.options();
        if !options.has_extension(&extension) {
            return Ok(Vec::new());
        }
        let name = message.full_name();
        let Value::Message(rules) = options.get_extension(&extension).into_owned() else {
            return Ok(Vec::new());
        };
        let mut found = Vec::new();
        for (rule, value) in rules.fields() {
            let (true, Value::List(expressions)) = (rule.name() == "cel", value) else {
                bail!("{name}: the message rule {} is not supported", rule.name());
            };
            for expression in expressions {
                let Value::Message(cel) = expression else { continue };
                let text = |field: &str| {
                    cel.get_field_by_name(field)
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                };
                let source = text("expression");
                let parsed = REQUIRED_WHEN
                    .captures(&source)
                    .with_context(|| format!("{name}: the CEL expression {source:?} is not one Keel reads"))?;
                let field_named = |n: &str| {
                    message
                        .get_field_by_name(n)
                        .with_context(|| format!("{name}: {source:?} names no field {n}"))
                };
                let (id, said) = (text("id"), text("message"));
                if id.is_empty() || said.is_empty() {
                    bail!("{name}: the CEL rule {source:?} needs an id and a message for people");
                }
                found.push(RequiredWhen {
                    id,
                    message: said,
                    when: field_named(&parsed[1])?,
                    equals: parsed[2].parse().with_context(|| format!("{name}: {source:?}"))?,
                    field: field_named(&parsed[3])?,
                });
            }
        }
        Ok(found)
    }
}

/// `pattern`, compiled once per process: the protos repeat patterns (the
/// email's is on three requests), every service and the gateway read the
/// same ones, and a pattern of Unicode classes compiles to megabytes (the
/// email's, `[\w...]{1,64}`, to about 7 MB).
fn compiled(pattern: &str) -> Result<regex::Regex, regex::Error> {
    static COMPILED: std::sync::LazyLock<std::sync::Mutex<HashMap<String, regex::Regex>>> =
        std::sync::LazyLock::new(Default::default);
    let mut compiled = COMPILED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(regex) = compiled.get(pattern) {
        return Ok(regex.clone());
    }
    let regex = regex::Regex::new(pattern)?;
    compiled.insert(pattern.to_owned(), regex.clone());
    Ok(regex)
}

static REQUIRED_WHEN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    #[allow(clippy::unwrap_used)] // a constant expression, covered by the tests
    regex::Regex::new(r"^this\.([a-z_][a-z0-9_]*) != (-?[0-9]+) \|\| this\.([a-z_][a-z0-9_]*) != ''$").unwrap()
});
