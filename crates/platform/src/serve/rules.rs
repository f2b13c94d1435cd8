//! Request rules: the `buf.validate` (protovalidate) field annotations in the
//! protos, read once from the descriptor set, enforced on every request
//! before its handler (see [`ValidateLayer`]) and published by the gateway's
//! OpenAPI document, so the contract says what the server refuses.
//!
//! Only the standard rules Keel's protos use are understood (no CEL): a rule
//! this module does not know fails at start-up, so nothing declared in a proto
//! is silently left unchecked.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use anyhow::{Context as _, bail};
use bytes::{Buf as _, Bytes};
use http_body_util::BodyExt as _;
use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value};

use crate::error::{Error, FieldViolation};

/// The protovalidate field option.
const FIELD_RULES: &str = "buf.validate.field";
/// Event delivery (EventSink), whose requests are not checked.
const EVENTS_PACKAGE: &str = "keel.events.v1";
/// The protovalidate message option.
const MESSAGE_RULES: &str = "buf.validate.message";
/// `buf.validate.Ignore.IGNORE_IF_ZERO_VALUE`.
const IGNORE_IF_ZERO_VALUE: i32 = 1;
/// `buf.validate.Ignore.IGNORE_ALWAYS`.
const IGNORE_ALWAYS: i32 = 3;

/// One standard rule on one value.
#[derive(Debug, Clone)]
pub enum Check {
    /// `string.min_len`: at least this many characters.
    MinLen(u64),
    /// `string.max_len`: at most this many characters.
    MaxLen(u64),
    /// `string.pattern`: matches this RE2 expression.
    Pattern(regex::Regex),
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
            Check::Pattern(_) => "string.pattern".into(),
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

    /// Why a value breaks the rule, or None when it keeps it.
    fn broken_by(&self, field: &FieldDescriptor, value: &Value) -> Option<String> {
        match (self, value) {
            (Check::MinLen(n), Value::String(s)) => {
                (s.chars().count() < *n as usize).then(|| format!("must be at least {n} characters"))
            }
            (Check::MaxLen(n), Value::String(s)) => {
                (s.chars().count() > *n as usize).then(|| format!("must be at most {n} characters"))
            }
            (Check::Pattern(re), Value::String(s)) => {
                (!re.is_match(s)).then(|| format!("must match the pattern {}", re.as_str()))
            }
            (Check::Uuid, Value::String(s)) => (!UUID.is_match(s)).then(|| "must be a UUID".to_owned()),
            (Check::In(allowed), Value::String(s)) => {
                (!allowed.contains(s)).then(|| format!("must be one of {}", allowed.join(", ")))
            }
            (Check::Gte(n), v) => integer(v)
                .filter(|v| *v < i128::from(*n))
                .map(|_| format!("must be at least {n}")),
            (Check::Gt(n), v) => integer(v)
                .filter(|v| *v <= i128::from(*n))
                .map(|_| format!("must be greater than {n}")),
            (Check::Lte(n), v) => integer(v)
                .filter(|v| *v > i128::from(*n))
                .map(|_| format!("must be at most {n}")),
            (Check::Lt(n), v) => integer(v)
                .filter(|v| *v >= i128::from(*n))
                .map(|_| format!("must be less than {n}")),
            (Check::DefinedOnly, Value::EnumNumber(n)) => match field.kind() {
                Kind::Enum(e) if e.get_value(*n).is_none() => Some("must be a defined value".to_owned()),
                _ => None,
            },
            (Check::NotIn(numbers), Value::EnumNumber(n)) if numbers.contains(&i64::from(*n)) => {
                let name = match field.kind() {
                    Kind::Enum(e) => e.get_value(*n).map(|v| v.name().to_owned()),
                    _ => None,
                };
                Some(format!("must not be {}", name.unwrap_or_else(|| n.to_string())))
            }
            (Check::NotIn(numbers), v) => integer(v)
                .filter(|v| numbers.iter().any(|n| i128::from(*n) == *v))
                .map(|v| format!("must not be {v}")),
            (Check::MinItems(n), Value::List(items)) => {
                (items.len() < *n as usize).then(|| format!("must have at least {n} items"))
            }
            (Check::MaxItems(n), Value::List(items)) => {
                (items.len() > *n as usize).then(|| format!("must have at most {n} items"))
            }
            (Check::MaskIn(allowed), Value::Message(mask)) => {
                let paths = mask.get_field_by_name("paths");
                let paths = paths.as_deref().and_then(Value::as_list).unwrap_or_default();
                let outside = paths.iter().filter_map(Value::as_str).find(|path| {
                    !allowed
                        .iter()
                        .any(|a| path == a || path.strip_prefix(a.as_str()).is_some_and(|rest| rest.starts_with('.')))
                });
                outside.map(|path| format!("{path} is not one of {}", allowed.join(", ")))
            }
            (Check::Unique, Value::List(items)) => items
                .iter()
                .enumerate()
                .any(|(i, item)| items[..i].contains(item))
                .then(|| "must not list an item twice".to_owned()),
            _ => None,
        }
    }
}

static UUID: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    #[allow(clippy::unwrap_used)] // a constant expression, covered by the tests
    regex::Regex::new("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$").unwrap()
});

fn integer(value: &Value) -> Option<i128> {
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
                                parsed.value = value_checks(&name, items)?;
                            }
                            (other, _) => bail!("{name}: the rule repeated.{other} is not supported"),
                        }
                    }
                }
                (_, Value::Message(typed)) => parsed.value = typed_checks(&name, rule.name(), typed)?,
                (other, _) => bail!("{name}: the rule {other} is not supported"),
            }
        }
        Ok(Some(parsed))
    }
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
        checks.iter().any(|check| check.broken_by(field, &zero).is_some())
    }
}

/// The typed rules of a repeated field's items (`repeated.items`).
fn value_checks(name: &str, items: &DynamicMessage) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    for (rule, value) in items.fields() {
        match value {
            Value::Message(typed) => checks.extend(typed_checks(name, rule.name(), typed)?),
            _ => bail!("{name}: the item rule {} is not supported", rule.name()),
        }
    }
    Ok(checks)
}

/// `string`, `int32`, `enum`, ... rules.
fn typed_checks(name: &str, kind: &str, rules: &DynamicMessage) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    for (rule, value) in rules.fields() {
        let check = match (kind, rule.name(), value) {
            ("string", "min_len", Value::U64(n)) => Check::MinLen(*n),
            ("string", "max_len", Value::U64(n)) => Check::MaxLen(*n),
            ("string", "pattern", Value::String(p)) => {
                Check::Pattern(regex::Regex::new(p).with_context(|| format!("{name}: the pattern {p:?}"))?)
            }
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
                found.push(RequiredWhen {
                    id: text("id"),
                    message: text("message"),
                    when: field_named(&parsed[1])?,
                    equals: parsed[2].parse().with_context(|| format!("{name}: {source:?}"))?,
                    field: field_named(&parsed[3])?,
                });
            }
        }
        Ok(found)
    }

    /// Whether `message` breaks the rule.
    fn broken_by(&self, message: &DynamicMessage) -> bool {
        let when = message.get_field(&self.when);
        let triggered = match when.as_ref() {
            Value::EnumNumber(n) => i64::from(*n) == self.equals,
            other => integer(other) == Some(i128::from(self.equals)),
        };
        triggered && !message.has_field(&self.field)
    }
}

static REQUIRED_WHEN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    #[allow(clippy::unwrap_used)] // a constant expression, covered by the tests
    regex::Regex::new(r"^this\.([a-z_][a-z0-9_]*) != (-?[0-9]+) \|\| this\.([a-z_][a-z0-9_]*) != ''$").unwrap()
});

/// Every request message's rules, by message name, read once.
#[derive(Debug, Default)]
pub struct Rules {
    messages: HashMap<String, Vec<(FieldDescriptor, FieldRules)>>,
    /// Message rules, by message name.
    conditions: HashMap<String, Vec<RequiredWhen>>,
    /// The request message of each method, by gRPC path (`/pkg.Service/Method`).
    methods: HashMap<String, MessageDescriptor>,
}

impl Rules {
    /// The rules of every message in Keel's descriptor set.
    pub fn load() -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(keel::FILE_DESCRIPTOR_SET).context("decoding the descriptor set")?;
        Self::from_pool(&pool)
    }

    /// The rules of every message in `pool`.
    pub fn from_pool(pool: &DescriptorPool) -> anyhow::Result<Self> {
        let mut rules = Rules::default();
        for message in pool.all_messages() {
            let mut fields = Vec::new();
            for field in message.fields() {
                if let Some(field_rules) = FieldRules::of(&field)? {
                    fields.push((field, field_rules));
                }
            }
            if !fields.is_empty() {
                rules.messages.insert(message.full_name().to_owned(), fields);
            }
            let conditions = RequiredWhen::of(&message)?;
            if !conditions.is_empty() {
                rules.conditions.insert(message.full_name().to_owned(), conditions);
            }
        }
        // Events are facts their producer checked when it wrote them, and
        // they carry Money that may be negative (a debit's delta): a consumer
        // refusing one would stall the producer's outbox for good.
        for service in pool.services().filter(|s| s.package_name() != EVENTS_PACKAGE) {
            // A request stream is not read ahead: the call would wait for
            // all of it. Every Keel RPC takes a single request.
            for method in service.methods().filter(|m| !m.is_client_streaming()) {
                if has_nested_rules(&rules, &method.input()) {
                    let path = format!("/{}/{}", service.full_name(), method.name());
                    rules.methods.insert(path, method.input());
                }
            }
        }
        Ok(rules)
    }

    /// Every rule `message` breaks, nested messages included, each named by
    /// its field path (`amount.currency_code`) and the rule's id.
    pub fn violations(&self, message: &DynamicMessage) -> Vec<FieldViolation> {
        let mut found = Vec::new();
        self.check(message, "", &mut found);
        found
    }

    fn check(&self, message: &DynamicMessage, prefix: &str, found: &mut Vec<FieldViolation>) {
        let descriptor = message.descriptor();
        if let Some(fields) = self.messages.get(descriptor.full_name()) {
            for (field, rules) in fields {
                let path = format!("{prefix}{}", field.name());
                let set = message.has_field(field);
                if !set {
                    if rules.required {
                        found.push(FieldViolation {
                            field: path,
                            description: "required: is required".into(),
                        });
                        continue;
                    }
                    // Explicit presence, or a zero value the proto says to skip.
                    if field.supports_presence() || rules.ignore_if_zero {
                        continue;
                    }
                }
                let value = message.get_field(field);
                let mut broken = |check: &Check, value: &Value| {
                    if let Some(why) = check.broken_by(field, value) {
                        found.push(FieldViolation {
                            field: path.clone(),
                            description: format!("{}: {why}", check.id(field)),
                        });
                    }
                };
                for check in &rules.list {
                    broken(check, &value);
                }
                match value.as_ref() {
                    Value::List(items) => {
                        for item in items {
                            for check in &rules.value {
                                broken(check, item);
                            }
                        }
                    }
                    single => {
                        for check in &rules.value {
                            broken(check, single);
                        }
                    }
                }
            }
        }
        for condition in self.conditions.get(descriptor.full_name()).into_iter().flatten() {
            if condition.broken_by(message) {
                found.push(FieldViolation {
                    field: format!("{prefix}{}", condition.field.name()),
                    description: format!("{}: {}", condition.id, condition.message),
                });
            }
        }
        // Nested messages carry rules of their own.
        for (field, value) in message.fields() {
            let path = format!("{prefix}{}", field.name());
            match value {
                Value::Message(inner) => self.check(inner, &format!("{path}."), found),
                Value::List(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Value::Message(inner) = item {
                            self.check(inner, &format!("{path}[{i}]."), found);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// The request message type of the gRPC method at `path`.
    fn request_type(&self, path: &str) -> Option<&MessageDescriptor> {
        self.methods.get(path)
    }
}

/// Checks every unary request against its message's rules before the
/// service sees it: a broken rule is INVALID_ARGUMENT with a `BadRequest`
/// field violation per rule, and the handler is not called.
#[derive(Debug, Clone)]
pub struct ValidateLayer {
    rules: Arc<Rules>,
}

impl ValidateLayer {
    /// A layer enforcing `rules`.
    pub fn new(rules: Arc<Rules>) -> Self {
        Self { rules }
    }
}

impl<S> tower::Layer<S> for ValidateLayer {
    type Service = Validate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Validate {
            inner,
            rules: self.rules.clone(),
        }
    }
}

/// The service [`ValidateLayer`] builds.
#[derive(Debug, Clone)]
pub struct Validate<S> {
    inner: S,
    rules: Arc<Rules>,
}

/// The largest request the check reads whole (tonic's own default limit).
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

impl<S> tower::Service<http::Request<tonic::body::Body>> for Validate<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // The clone is not ready; swap so the ready service handles this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(descriptor) = self.rules.request_type(request.uri().path()).cloned() else {
            return Box::pin(inner.call(request));
        };
        let rules = self.rules.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = match http_body_util::Limited::new(body, MAX_REQUEST_BYTES).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    let status = tonic::Status::resource_exhausted("the request is too large or was cut off");
                    return Ok(status.into_http());
                }
            };
            if let Some(violations) = check_frame(&rules, &descriptor, &bytes)
                && !violations.is_empty()
            {
                return Ok(tonic::Status::from(Error::invalid_fields(violations)).into_http());
            }
            let request = http::Request::from_parts(parts, tonic::body::Body::new(http_body_util::Full::new(bytes)));
            inner.call(request).await
        })
    }
}

/// Whether any message reachable from `descriptor` has rules.
fn has_nested_rules(rules: &Rules, descriptor: &MessageDescriptor) -> bool {
    let mut seen = Vec::new();
    let mut pending = vec![descriptor.clone()];
    while let Some(message) = pending.pop() {
        if rules.messages.contains_key(message.full_name()) || rules.conditions.contains_key(message.full_name()) {
            return true;
        }
        for field in message.fields() {
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

/// The violations of the single uncompressed gRPC message in `frame`, or
/// None when it is not one (compressed, several messages, undecodable): the
/// service then reads it and answers as it always does.
fn check_frame(rules: &Rules, descriptor: &MessageDescriptor, frame: &Bytes) -> Option<Vec<FieldViolation>> {
    let mut buf = frame.clone();
    if buf.remaining() < 5 {
        return None;
    }
    let compressed = buf.get_u8();
    let len = buf.get_u32() as usize;
    if compressed != 0 || buf.remaining() != len {
        return None;
    }
    let message = DynamicMessage::decode(descriptor.clone(), buf).ok()?;
    Some(rules.violations(&message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_in_the_protos_is_understood() {
        let rules = Rules::load().expect("rules");
        assert!(rules.messages.contains_key("keel.auth.v1.RegisterRequest"));
        assert!(
            rules
                .request_type("/keel.accounts.v1.AccountsService/Deposit")
                .is_some()
        );
        // A debit's event carries a negative Money; events are not requests.
        assert!(rules.request_type("/keel.events.v1.EventSink/Deliver").is_none());
        assert!(UUID.is_match("0190b6a4-0000-7000-8000-000000000000"));
        assert!(!UUID.is_match("not-a-uuid"));
    }
}
