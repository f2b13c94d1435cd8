//! How a server stream resumes after its client reconnects, as the
//! `keel.common.v1.stream_resume` method option says: which reply field is
//! each event's id (the SSE `id:`), and which request field takes the last
//! id the client saw (from `Last-Event-ID`).

use anyhow::Context as _;
use prost_reflect::{
    DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, Value,
};

use crate::descriptors::settable_field_path;

/// The header an EventSource reconnects with (the SSE spec's
/// `Last-Event-ID`).
pub const LAST_EVENT_ID: &str = "last-event-id";

/// A stream's resume rule, checked against its messages at start.
#[derive(Debug, Clone)]
pub struct StreamResume {
    /// The reply fields leading to each event's id.
    cursor: Vec<FieldDescriptor>,
    /// The request fields leading to the one `Last-Event-ID` fills.
    resume_field: Vec<FieldDescriptor>,
}

impl StreamResume {
    /// The rule `rpc` declares with `extension`, if any. Fails when it is
    /// not a server stream, or a path does not name a singular string field
    /// (a typo in the contract must stop the gateway, not silently turn
    /// resuming off).
    pub fn of(rpc: &MethodDescriptor, extension: &ExtensionDescriptor) -> anyhow::Result<Option<Self>> {
        let options = rpc.options();
        if !options.has_extension(extension) {
            return Ok(None);
        }
        let rule: keel::common::v1::StreamResume = options
            .get_extension(extension)
            .as_message()
            .context("keel.common.v1.stream_resume is not a message")?
            .transcode_to()
            .with_context(|| format!("reading the stream_resume option of {}", rpc.full_name()))?;
        anyhow::ensure!(
            rpc.is_server_streaming(),
            "{}: stream_resume is only for server-streaming RPCs",
            rpc.full_name()
        );
        let cursor = reply_path(&rpc.output(), &rule.cursor).map_err(|reason| {
            anyhow::anyhow!("{} stream_resume cursor {:?}: {reason}", rpc.full_name(), rule.cursor)
        })?;
        let resume_field = request_path(&rpc.input(), &rule.resume_field).map_err(|reason| {
            anyhow::anyhow!(
                "{} stream_resume resume_field {:?}: {reason}",
                rpc.full_name(),
                rule.resume_field
            )
        })?;
        Ok(Some(StreamResume { cursor, resume_field }))
    }

    /// The event id of `reply`: its cursor field, when set and non-empty.
    /// None also when it holds a line break or NUL, which the SSE `id:`
    /// line cannot carry.
    pub fn cursor_of(&self, reply: &DynamicMessage) -> Option<String> {
        read(reply, &self.cursor).filter(|id| !id.is_empty() && !id.contains(['\n', '\r', '\0']))
    }

    /// Sets the request's resume field to `last_id`, replacing what the
    /// query string gave (a reconnecting EventSource sends the header, which
    /// is newer than the URL it first opened).
    pub fn resume(&self, request: &mut DynamicMessage, last_id: &str) {
        write(request, &self.resume_field, last_id);
    }

    /// The resume field's query parameter name (dotted lowerCamelCase).
    pub fn resume_parameter(&self) -> String {
        self.resume_field
            .iter()
            .map(FieldDescriptor::json_name)
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// The fields a dotted path names in a request, when binding could set the
/// last and it is a singular string.
fn request_path(message: &MessageDescriptor, dotted: &str) -> Result<Vec<FieldDescriptor>, String> {
    let segments: Vec<String> = dotted.split('.').map(str::to_owned).collect();
    let path = settable_field_path(message, &segments)?;
    match path.last() {
        Some(field) if field.kind() == Kind::String && !field.is_list() => Ok(path),
        _ => Err("is not a singular string field".to_owned()),
    }
}

/// The fields a dotted path names in a reply: singular messages on the way,
/// a singular string at the end.
fn reply_path(message: &MessageDescriptor, dotted: &str) -> Result<Vec<FieldDescriptor>, String> {
    let segments: Vec<&str> = dotted.split('.').collect();
    let mut current = message.clone();
    let mut fields = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let field = current
            .get_field_by_name(segment)
            .or_else(|| current.get_field_by_json_name(segment))
            .ok_or_else(|| format!("{} has no field {segment}", current.name()))?;
        if field.is_list() || field.is_map() {
            return Err(format!("{segment} is repeated"));
        }
        let last = i + 1 == segments.len();
        match field.kind() {
            Kind::Message(inner) if !last => current = inner,
            Kind::String if last => {}
            _ if last => return Err(format!("{segment} is not a string")),
            _ => return Err(format!("{segment} has no fields")),
        }
        fields.push(field);
    }
    Ok(fields)
}

fn read(message: &DynamicMessage, path: &[FieldDescriptor]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    if !message.has_field(first) {
        return None;
    }
    let value = message.get_field(first);
    if rest.is_empty() {
        value.as_str().map(str::to_owned)
    } else {
        read(value.as_message()?, rest)
    }
}

fn write(message: &mut DynamicMessage, path: &[FieldDescriptor], id: &str) {
    match path {
        [] => {}
        [last] => message.set_field(last, Value::String(id.to_owned())),
        [first, rest @ ..] => {
            if let Some(inner) = message.get_field_mut(first).as_message_mut() {
                write(inner, rest, id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptors::Descriptors;

    fn stream() -> (Descriptors, MethodDescriptor) {
        let descriptors = Descriptors::load().expect("descriptors");
        let rpc = descriptors
            .pool()
            .get_service_by_name("keel.notifications.v1.NotificationsService")
            .and_then(|service| service.methods().find(|m| m.name() == "StreamNotifications"))
            .expect("StreamNotifications");
        (descriptors, rpc)
    }

    #[test]
    fn the_notification_stream_resumes_by_notification_id() {
        let (descriptors, rpc) = stream();
        let resume = StreamResume::of(&rpc, descriptors.stream_resume())
            .expect("a valid rule")
            .expect("a rule");
        assert_eq!(resume.resume_parameter(), "afterNotificationId");
        let reply = DynamicMessage::deserialize(rpc.output(), serde_json::json!({ "notification": { "id": "n7" } }))
            .expect("a reply");
        assert_eq!(resume.cursor_of(&reply).as_deref(), Some("n7"));
        assert_eq!(resume.cursor_of(&DynamicMessage::new(rpc.output())), None);
        let mut request = DynamicMessage::new(rpc.input());
        resume.resume(&mut request, "n7");
        assert_eq!(
            serde_json::to_value(&request).expect("JSON"),
            serde_json::json!({ "afterNotificationId": "n7" })
        );
    }

    fn message(name: &str) -> MessageDescriptor {
        Descriptors::load()
            .expect("descriptors")
            .pool()
            .get_message_by_name(name)
            .expect("the message")
    }

    #[test]
    fn paths_that_name_no_string_field_are_refused() {
        let (_, rpc) = stream();
        let output = rpc.output();
        assert!(reply_path(&output, "notification.id").is_ok());
        for bad in [
            "notification",
            "notification.read",
            "notification.nosuch",
            "nosuch",
            "notification.id.x",
        ] {
            assert!(reply_path(&output, bad).is_err(), "{bad}");
        }
        let input = rpc.input();
        assert!(request_path(&input, "after_notification_id").is_ok());
        assert!(request_path(&input, "afterNotificationId").is_ok(), "JSON names too");
        assert!(request_path(&input, "nosuch").is_err());
        let list = message("keel.notifications.v1.ListNotificationsRequest");
        assert!(request_path(&list, "page_size").is_err(), "not a string");
    }
}
