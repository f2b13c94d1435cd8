//! The rule set: every request message's rules, read once from a descriptor
//! pool, and the walk that finds every rule a message breaks.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use anyhow::Context as _;
use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value};

use super::model::{Check, FieldRules, RequiredWhen};
use crate::error::FieldViolation;

/// Event delivery (EventSink), whose requests are not checked.
const EVENTS_PACKAGE: &str = "keel.events.v1";

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

    /// [`Rules::load`], read once per process and shared: services that run
    /// in one process (`keel up`) hold one copy of the same rules.
    pub fn shared() -> anyhow::Result<Arc<Self>> {
        static SHARED: OnceLock<Arc<Rules>> = OnceLock::new();
        if let Some(rules) = SHARED.get() {
            return Ok(rules.clone());
        }
        let loaded = Arc::new(Self::load()?);
        Ok(SHARED.get_or_init(|| loaded).clone())
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
                        found.push(FieldViolation::new(path, "required", "is required"));
                        continue;
                    }
                    // Explicit presence, or a zero value the proto says to skip.
                    if field.supports_presence() || rules.ignore_if_zero {
                        continue;
                    }
                }
                let value = message.get_field(field);
                let mut broken = |check: &Check, value: &Value| {
                    if check.breaks(field, value) {
                        found.push(FieldViolation {
                            pattern: check.pattern().map(str::to_owned),
                            ..FieldViolation::new(path.clone(), check.id(field), check.message(field))
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
                found.push(FieldViolation::new(
                    format!("{prefix}{}", condition.field.name()),
                    condition.id.clone(),
                    condition.message.clone(),
                ));
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
    pub(super) fn request_type(&self, path: &str) -> Option<&MessageDescriptor> {
        self.methods.get(path)
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
    }

    /// What reads as a regular expression rather than a sentence.
    const REGEX_SYNTAX: [char; 10] = ['\\', '^', '$', '[', ']', '{', '}', '*', '+', '|'];

    #[test]
    fn every_rule_in_the_protos_tells_people_why_in_words() {
        let rules = Rules::load().expect("rules");
        let mut seen = 0;
        for fields in rules.messages.values() {
            for (field, field_rules) in fields {
                for check in field_rules.value.iter().chain(&field_rules.list) {
                    let id = check.id(field);
                    let message = check.message(field);
                    let at = format!("{} ({id})", field.full_name());
                    assert!(!id.is_empty(), "{at}: no rule id");
                    assert!(
                        message.starts_with("must ") || message.starts_with("may "),
                        "{at}: {message:?}"
                    );
                    if let Some(pattern) = check.pattern() {
                        assert!(!message.contains(pattern), "{at}: the message quotes the pattern");
                    }
                    assert!(
                        !message.contains(REGEX_SYNTAX),
                        "{at}: {message:?} reads like a pattern, not a sentence"
                    );
                    seen += 1;
                }
            }
        }
        for conditions in rules.conditions.values() {
            for condition in conditions {
                assert!(!condition.id.is_empty() && !condition.message.is_empty());
                assert!(!condition.message.contains(REGEX_SYNTAX), "{}", condition.message);
                seen += 1;
            }
        }
        // Every kind of rule the protos use, patterns among them.
        assert!(seen > 100, "only {seen} rules read");
    }

    #[test]
    fn every_example_in_the_protos_keeps_its_fields_rules() {
        let pool = DescriptorPool::decode(keel::FILE_DESCRIPTOR_SET).expect("pool");
        let mut seen = 0;
        for message in pool.all_messages() {
            for field in message.fields() {
                let Some(example) = crate::serve::rules::FieldText::of(&field).example else {
                    continue;
                };
                let value = match field.kind() {
                    Kind::String => Value::String(example.clone()),
                    Kind::Int32 => Value::I32(example.parse().expect("an int32 example")),
                    Kind::Int64 => Value::I64(example.parse().expect("an int64 example")),
                    Kind::Enum(e) => {
                        Value::EnumNumber(e.get_value_by_name(&example).expect("an enum example").number())
                    }
                    other => panic!("{}: an example for a {other:?} field", field.full_name()),
                };
                let rules = FieldRules::of(&field).expect("rules").unwrap_or_default();
                for check in &rules.value {
                    assert!(
                        !check.breaks(&field, &value),
                        "{}: {example:?} breaks {}",
                        field.full_name(),
                        check.id(&field)
                    );
                }
                seen += 1;
            }
        }
        assert!(seen >= 10, "only {seen} examples");
    }

    #[test]
    fn a_broken_pattern_is_told_in_words_with_the_rule_and_pattern_in_the_details() {
        let rules = Rules::load().expect("rules");
        let pool = DescriptorPool::decode(keel::FILE_DESCRIPTOR_SET).expect("pool");
        let register = pool
            .get_message_by_name("keel.auth.v1.RegisterRequest")
            .expect("RegisterRequest");
        let mut message = DynamicMessage::new(register);
        message.set_field_by_name("email", Value::String("not-an-email".into()));
        message.set_field_by_name("password", Value::String("x".into()));
        let violations = rules.violations(&message);
        let email = violations.iter().find(|v| v.field == "email").expect("email violation");
        assert_eq!(email.description, "must be a valid email address");
        assert_eq!(email.reason, "string.pattern");
        assert!(email.pattern.as_deref().is_some_and(|p| p.starts_with('^')));
        let password = violations
            .iter()
            .find(|v| v.field == "password")
            .expect("password violation");
        assert_eq!(password.description, "must be at least 8 characters");
        assert_eq!(password.reason, "string.min_len");
        assert_eq!(password.pattern, None);
    }
}
