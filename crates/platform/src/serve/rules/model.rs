//! The rule model: the standard rules a field or message carries, and
//! whether a value keeps them.

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, Value};

/// One standard rule on one value.
#[derive(Debug, Clone)]
pub enum Check {
    /// `string.min_len`: at least this many characters.
    MinLen(u64),
    /// `string.max_len`: at most this many characters.
    MaxLen(u64),
    /// `string.len`: exactly this many characters.
    Len(u64),
    /// `string.pattern`: matches this RE2 expression. `message` is what a
    /// value that does not is told (the field's `keel.common.v1.field`
    /// option): a pattern means nothing to most people.
    Pattern {
        /// The expression.
        regex: regex::Regex,
        /// "must be a valid email address".
        message: String,
    },
    /// `string.uuid`: an RFC 4122 UUID, hyphenated.
    Uuid,
    /// `string.in`: one of these strings.
    In(Vec<String>),
    /// `<int>.gte`.
    Gte(i64),
    /// `<int>.gt`.
    Gt(i64),
    /// `<int>.lte`.
    Lte(i64),
    /// `<int>.lt`.
    Lt(i64),
    /// `enum.defined_only`: a value the enum declares.
    DefinedOnly,
    /// `enum.not_in` / `<int>.not_in`: none of these numbers.
    NotIn(Vec<i64>),
    /// `repeated.min_items`.
    MinItems(u64),
    /// `repeated.max_items`.
    MaxItems(u64),
    /// `repeated.unique`: no item twice.
    Unique,
    /// `field_mask.in`: every path is one of these (or below one).
    MaskIn(Vec<String>),
}

impl Check {
    /// The rule's protovalidate id, as violations name it (`string.min_len`).
    pub fn id(&self, field: &FieldDescriptor) -> String {
        let kind = kind_name(field);
        match self {
            Check::MinLen(_) => "string.min_len".into(),
            Check::MaxLen(_) => "string.max_len".into(),
            Check::Len(_) => "string.len".into(),
            Check::Pattern { .. } => "string.pattern".into(),
            Check::Uuid => "string.uuid".into(),
            Check::In(_) => "string.in".into(),
            Check::Gte(_) => format!("{kind}.gte"),
            Check::Gt(_) => format!("{kind}.gt"),
            Check::Lte(_) => format!("{kind}.lte"),
            Check::Lt(_) => format!("{kind}.lt"),
            Check::DefinedOnly => "enum.defined_only".into(),
            Check::NotIn(_) => format!("{kind}.not_in"),
            Check::MinItems(_) => "repeated.min_items".into(),
            Check::MaxItems(_) => "repeated.max_items".into(),
            Check::Unique => "repeated.unique".into(),
            Check::MaskIn(_) => "field_mask.in".into(),
        }
    }

    /// Whether `value` breaks the rule.
    pub(super) fn breaks(&self, field: &FieldDescriptor, value: &Value) -> bool {
        let chars = |s: &str| s.chars().count() as u64;
        match (self, value) {
            (Check::MinLen(n), Value::String(s)) => chars(s) < *n,
            (Check::MaxLen(n), Value::String(s)) => chars(s) > *n,
            (Check::Len(n), Value::String(s)) => chars(s) != *n,
            (Check::Pattern { regex, .. }, Value::String(s)) => !regex.is_match(s),
            (Check::Uuid, Value::String(s)) => !UUID.is_match(s),
            (Check::In(allowed), Value::String(s)) => !allowed.contains(s),
            (Check::Gte(n), v) => integer(v).is_some_and(|v| v < i128::from(*n)),
            (Check::Gt(n), v) => integer(v).is_some_and(|v| v <= i128::from(*n)),
            (Check::Lte(n), v) => integer(v).is_some_and(|v| v > i128::from(*n)),
            (Check::Lt(n), v) => integer(v).is_some_and(|v| v >= i128::from(*n)),
            (Check::DefinedOnly, Value::EnumNumber(n)) => match field.kind() {
                Kind::Enum(e) => e.get_value(*n).is_none(),
                _ => false,
            },
            (Check::NotIn(numbers), Value::EnumNumber(n)) => numbers.contains(&i64::from(*n)),
            (Check::NotIn(numbers), v) => integer(v).is_some_and(|v| numbers.iter().any(|n| i128::from(*n) == v)),
            (Check::MinItems(n), Value::List(items)) => (items.len() as u64) < *n,
            (Check::MaxItems(n), Value::List(items)) => items.len() as u64 > *n,
            (Check::MaskIn(allowed), Value::Message(mask)) => {
                let paths = mask.get_field_by_name("paths");
                let paths = paths.as_deref().and_then(Value::as_list).unwrap_or_default();
                paths.iter().filter_map(Value::as_str).any(|path| {
                    !allowed
                        .iter()
                        .any(|a| path == a || path.strip_prefix(a.as_str()).is_some_and(|rest| rest.starts_with('.')))
                })
            }
            (Check::Unique, Value::List(items)) => items.iter().enumerate().any(|(i, item)| items[..i].contains(item)),
            _ => false,
        }
    }

    /// What a value breaking the rule is told, after the field's name: a
    /// sentence for people that never quotes a pattern (the rule's id and
    /// pattern go in the error's details).
    pub fn message(&self, field: &FieldDescriptor) -> String {
        match self {
            Check::MinLen(n) => format!("must be at least {n} characters"),
            Check::MaxLen(n) => format!("must be at most {n} characters"),
            Check::Len(n) => format!("must be exactly {n} characters"),
            Check::Pattern { message, .. } => message.clone(),
            Check::Uuid => "must be a UUID".to_owned(),
            Check::In(allowed) => format!("must be one of {}", allowed.join(", ")),
            Check::Gte(n) => format!("must be at least {n}"),
            Check::Gt(n) => format!("must be greater than {n}"),
            Check::Lte(n) => format!("must be at most {n}"),
            Check::Lt(n) => format!("must be less than {n}"),
            Check::DefinedOnly => match field.kind() {
                Kind::Enum(e) => format!("must be one of {}", enum_names(&e, &[]).join(", ")),
                _ => "must be a defined value".to_owned(),
            },
            Check::NotIn(numbers) => match field.kind() {
                // `not_in: [0]` on an enum: the unspecified value is "not set".
                Kind::Enum(e) => format!("must be one of {}", enum_names(&e, numbers).join(", ")),
                _ => format!(
                    "must not be {}",
                    numbers.iter().map(i64::to_string).collect::<Vec<_>>().join(" or ")
                ),
            },
            Check::MinItems(n) => format!("must have at least {n} items"),
            Check::MaxItems(n) => format!("must have at most {n} items"),
            Check::Unique => "must not list an item twice".to_owned(),
            Check::MaskIn(allowed) => format!("may name only {}", allowed.join(", ")),
        }
    }

    /// The pattern a value breaking the rule is refused by, if any.
    pub fn pattern(&self) -> Option<&str> {
        match self {
            Check::Pattern { regex, .. } => Some(regex.as_str()),
            _ => None,
        }
    }
}

/// The names of `enumeration`'s values, but those numbered in `except`.
fn enum_names(enumeration: &prost_reflect::EnumDescriptor, except: &[i64]) -> Vec<String> {
    enumeration
        .values()
        .filter(|v| !except.contains(&i64::from(v.number())))
        .map(|v| v.name().to_owned())
        .collect()
}

static UUID: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    #[allow(clippy::unwrap_used)] // a constant expression, covered by the tests
    regex::Regex::new("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$").unwrap()
});

pub(super) fn integer(value: &Value) -> Option<i128> {
    match value {
        Value::I32(v) => Some(i128::from(*v)),
        Value::I64(v) => Some(i128::from(*v)),
        Value::U32(v) => Some(i128::from(*v)),
        Value::U64(v) => Some(i128::from(*v)),
        _ => None,
    }
}

fn kind_name(field: &FieldDescriptor) -> &'static str {
    match field.kind() {
        Kind::Int32 => "int32",
        Kind::Int64 => "int64",
        Kind::Uint32 => "uint32",
        Kind::Uint64 => "uint64",
        Kind::Sint32 => "sint32",
        Kind::Sint64 => "sint64",
        Kind::String => "string",
        Kind::Enum(_) => "enum",
        _ => "value",
    }
}

/// What people are told about a field, beside its rules (Keel's own
/// `keel.common.v1.field` option).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldText {
    /// What a value breaking the field's pattern is told.
    pub pattern_message: Option<String>,
    /// A value that works as written, for the API reference.
    pub example: Option<String>,
}

/// The rules one field carries.
#[derive(Debug, Clone, Default)]
pub struct FieldRules {
    /// `required`: set (a message present, a string or number not zero, a
    /// list not empty).
    pub required: bool,
    /// `ignore = IGNORE_IF_ZERO_VALUE`: an unset (zero) value is not checked.
    pub ignore_if_zero: bool,
    /// Rules on the value (on each item's value for a repeated field, with
    /// the list's own rules in `list`).
    pub value: Vec<Check>,
    /// `repeated.min_items` / `max_items`.
    pub list: Vec<Check>,
}

impl FieldRules {
    /// Whether leaving `field` unset breaks a rule: it is `required`, or its
    /// zero value (`""`, `0`, no items) is checked and refused. A client must
    /// then send it, so the document lists it as required.
    pub fn refuses_unset(&self, field: &FieldDescriptor) -> bool {
        if self.required {
            return true;
        }
        if self.ignore_if_zero || field.supports_presence() {
            return false;
        }
        let zero = Value::default_value_for_field(field);
        let checks: &[Check] = if field.is_list() { &self.list } else { &self.value };
        checks.iter().any(|check| check.breaks(field, &zero))
    }
}

/// A message rule: `field` must be set (not empty) when `when` holds
/// `equals`. Declared as the one CEL form the layer reads,
/// `this.<when> != <number> || this.<field> != ''`, so real protovalidate
/// runtimes enforce the same rule.
#[derive(Debug, Clone)]
pub struct RequiredWhen {
    /// The rule's id, as violations name it.
    pub id: String,
    /// Why, for people.
    pub message: String,
    /// The field that must be set.
    pub field: FieldDescriptor,
    /// The field whose value makes it required.
    pub when: FieldDescriptor,
    /// That value.
    pub equals: i64,
}

impl RequiredWhen {
    /// Whether `message` breaks the rule.
    pub(super) fn broken_by(&self, message: &DynamicMessage) -> bool {
        let when = message.get_field(&self.when);
        let triggered = match when.as_ref() {
            Value::EnumNumber(n) => i64::from(*n) == self.equals,
            other => integer(other) == Some(i128::from(self.equals)),
        };
        triggered && !message.has_field(&self.field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_accepts_hyphenated_uuids_only() {
        assert!(UUID.is_match("0190b6a4-0000-7000-8000-000000000000"));
        assert!(!UUID.is_match("not-a-uuid"));
    }
}
