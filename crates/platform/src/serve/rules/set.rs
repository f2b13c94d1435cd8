//! The rule set: every request message's rules, read once from a descriptor
//! pool, and the walk that finds every rule a message breaks.

use std::collections::HashMap;

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
}
