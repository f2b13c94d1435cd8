//! GetPreferences, UpdatePreferences and the one-click Unsubscribe.

use std::collections::BTreeMap;

use keel::notifications::v1 as pb;
use keel_platform::{
    Error,
    auth::principal::UserPrincipal,
    error::FieldViolation,
    proto::timestamp,
    serve::rpc::{Violations, etag, parse_etag, parse_id},
};
use uuid::Uuid;

use super::Notifications;
use crate::{
    app::{PreferencesChange, UserPreferences},
    domain::{Channel, Topic},
};

/// The fields UpdatePreferences may change.
const UPDATABLE: [&str; 2] = ["default_channels", "event_types"];

pub(super) async fn get_preferences(
    service: &Notifications,
    caller: &UserPrincipal,
    request: pb::GetPreferencesRequest,
) -> Result<pb::GetPreferencesResponse, Error> {
    let user_id = target(caller, "user_id", &request.user_id)?;
    let preferences = service.preferences(user_id).await?;
    Ok(pb::GetPreferencesResponse {
        preferences: Some(to_proto(&preferences)),
    })
}

pub(super) async fn update_preferences(
    service: &Notifications,
    caller: &UserPrincipal,
    request: pb::UpdatePreferencesRequest,
) -> Result<pb::UpdatePreferencesResponse, Error> {
    let wanted = request
        .preferences
        .ok_or_else(|| Error::invalid_field("preferences", "required", "is required"))?;
    let user_id = target(caller, "preferences.user_id", &wanted.user_id)?;
    let expected = parse_etag("preferences.etag", &wanted.etag)?;
    let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
    if let Some(path) = paths.iter().find(|p| !UPDATABLE.contains(&p.as_str())) {
        return Err(Error::invalid_field(
            "update_mask",
            "field_mask.in",
            format!("{path} cannot be updated (only default_channels and event_types)"),
        ));
    }
    let named = |field: &str| paths.is_empty() || paths.iter().any(|p| p == field);
    let mut violations = Violations::new();
    let default_channels = named("default_channels")
        .then(|| violations.check(channels("preferences.default_channels", &wanted.default_channels)));
    let overrides = named("event_types").then(|| violations.check(overrides(&wanted.event_types)));
    if default_channels.as_ref().is_some_and(Option::is_none) || overrides.as_ref().is_some_and(Option::is_none) {
        return Err(violations.into_error());
    }
    let change = PreferencesChange {
        default_channels: default_channels.flatten(),
        overrides: overrides.flatten(),
    };
    let preferences = service.update_preferences(user_id, expected, change).await?;
    Ok(pb::UpdatePreferencesResponse {
        preferences: Some(to_proto(&preferences)),
    })
}

pub(super) async fn unsubscribe(
    service: &Notifications,
    request: pb::UnsubscribeRequest,
) -> Result<pb::UnsubscribeResponse, Error> {
    let topic = service.unsubscribe(&request.token).await?;
    Ok(pb::UnsubscribeResponse {
        event_type: topic.as_str().to_owned(),
    })
}

/// The user `raw` names ("me" or an id): a user may name only themselves,
/// an admin anyone.
fn target(caller: &UserPrincipal, field: &str, raw: &str) -> Result<Uuid, Error> {
    let user_id = if raw == "me" {
        caller.user_id
    } else {
        parse_id(field, raw)?
    };
    if user_id != caller.user_id && !caller.is_admin() {
        return Err(Error::permission_denied(
            "NOT_YOUR_PREFERENCES",
            "you may read and change only your own preferences",
        ));
    }
    Ok(user_id)
}

fn channels(field: &str, raw: &[i32]) -> Result<Vec<Channel>, FieldViolation> {
    let mut chosen = Vec::with_capacity(raw.len());
    for (i, value) in raw.iter().enumerate() {
        let channel = Channel::parse(&format!("{field}[{i}]"), *value)?;
        if chosen.contains(&channel) {
            return Err(FieldViolation::new(
                format!("{field}[{i}]"),
                "repeated.unique",
                format!("{} is listed twice", channel.to_proto().as_str_name()),
            ));
        }
        chosen.push(channel);
    }
    Ok(chosen)
}

fn overrides(raw: &[pb::EventTypeChannels]) -> Result<BTreeMap<Topic, Vec<Channel>>, FieldViolation> {
    let mut chosen = BTreeMap::new();
    for (i, entry) in raw.iter().enumerate() {
        let field = format!("preferences.event_types[{i}]");
        let topic = Topic::parse(&format!("{field}.event_type"), &entry.event_type)?;
        let channels = channels(&format!("{field}.channels"), &entry.channels)?;
        // A later entry for the same event type replaces an earlier one.
        chosen.insert(topic, channels);
    }
    Ok(chosen)
}

fn to_proto(preferences: &UserPreferences) -> pb::Preferences {
    let chosen = &preferences.chosen;
    pb::Preferences {
        user_id: preferences.user_id.to_string(),
        default_channels: chosen.default_channels.iter().map(|c| c.to_proto() as i32).collect(),
        event_types: chosen
            .overrides
            .iter()
            .map(|(topic, channels)| pb::EventTypeChannels {
                event_type: topic.as_str().to_owned(),
                channels: channels.iter().map(|c| c.to_proto() as i32).collect(),
            })
            .collect(),
        etag: etag(preferences.version),
        update_time: preferences.update_time.map(timestamp),
    }
}
