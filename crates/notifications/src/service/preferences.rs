//! GetPreferences, UpdatePreferences and the one-click Unsubscribe.

use std::collections::BTreeMap;

use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use keel::notifications::v1 as pb;
use keel_platform::{
    Error,
    auth::principal::UserPrincipal,
    proto::timestamp,
    serve::rpc::{Violations, etag, parse_etag},
};
use uuid::Uuid;

use super::Notifications;
use crate::{
    domain::{Channel, Preferences, Topic},
    email::unsubscribe,
    store::preferences::{self, PreferencesRow},
};

/// The fields UpdatePreferences may change.
const UPDATABLE: [&str; 2] = ["default_channels", "event_types"];

pub(super) async fn get_preferences(
    service: &Notifications,
    caller: &UserPrincipal,
    request: pb::GetPreferencesRequest,
) -> Result<pb::GetPreferencesResponse, Error> {
    let user_id = target(caller, "user_id", &request.user_id)?;
    let mut conn = service.pool.get().await?;
    let row = preferences::get(&mut conn, user_id).await?;
    Ok(pb::GetPreferencesResponse {
        preferences: Some(to_proto(user_id, row.as_ref())?),
    })
}

pub(super) async fn update_preferences(
    service: &Notifications,
    caller: &UserPrincipal,
    request: pb::UpdatePreferencesRequest,
) -> Result<pb::UpdatePreferencesResponse, Error> {
    let wanted = request
        .preferences
        .ok_or_else(|| Error::invalid_field("preferences", "is required"))?;
    let user_id = target(caller, "preferences.user_id", &wanted.user_id)?;
    let expected = parse_etag("preferences.etag", &wanted.etag)?;
    let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
    if let Some(path) = paths.iter().find(|p| !UPDATABLE.contains(&p.as_str())) {
        return Err(Error::invalid_field(
            "update_mask",
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
    let (default_channels, overrides) = (default_channels.flatten(), overrides.flatten());

    let mut conn = service.pool.get().await?;
    let row = conn
        .transaction::<_, Error, _>(async |conn| {
            let current = preferences::lock(conn, user_id).await?;
            let version = current.as_ref().map_or(0, |row| row.version);
            if expected.is_some_and(|expected| expected != version) {
                return Err(Error::aborted(
                    "ETAG_MISMATCH",
                    "the preferences changed since they were read; read them again and retry",
                ));
            }
            let mut chosen = stored(current.as_ref())?;
            if let Some(default_channels) = default_channels {
                chosen.default_channels = default_channels;
            }
            if let Some(overrides) = overrides {
                chosen.overrides = overrides;
            }
            save(conn, user_id, &chosen).await
        })
        .await?;
    Ok(pb::UpdatePreferencesResponse {
        preferences: Some(to_proto(user_id, Some(&row))?),
    })
}

pub(super) async fn unsubscribe(
    service: &Notifications,
    request: pb::UnsubscribeRequest,
) -> Result<pb::UnsubscribeResponse, Error> {
    let (user_id, topic) = unsubscribe::verify(&service.link_key, &request.token).ok_or_else(|| {
        Error::unauthenticated("BAD_UNSUBSCRIBE_TOKEN", "this unsubscribe link is not one Keel signed")
    })?;
    let mut conn = service.pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        let current = preferences::lock(conn, user_id).await?;
        let chosen = stored(current.as_ref())?;
        if chosen.channels_for(topic).contains(&Channel::Email) {
            save(conn, user_id, &chosen.without(topic, Channel::Email)).await?;
        }
        Ok(())
    })
    .await?;
    tracing::info!(%user_id, topic = topic.as_str(), "unsubscribed from email");
    Ok(pb::UnsubscribeResponse {
        event_type: topic.as_str().to_owned(),
    })
}

/// A user's preferences: the stored ones, or the defaults.
pub(crate) async fn of(conn: &mut AsyncPgConnection, user_id: Uuid) -> Result<Preferences, Error> {
    stored(preferences::get(conn, user_id).await?.as_ref())
}

fn stored(row: Option<&PreferencesRow>) -> Result<Preferences, Error> {
    let Some(row) = row else {
        return Ok(Preferences::default());
    };
    Ok(Preferences {
        default_channels: row.default_channels.clone(),
        overrides: Preferences::overrides_from_json(&row.event_types)?,
    })
}

async fn save(conn: &mut AsyncPgConnection, user_id: Uuid, chosen: &Preferences) -> Result<PreferencesRow, Error> {
    Ok(preferences::put(conn, user_id, &chosen.default_channels, &chosen.overrides_json()).await?)
}

/// The user `raw` names ("me" or an id): a user may name only themselves,
/// an admin anyone.
fn target(caller: &UserPrincipal, field: &str, raw: &str) -> Result<Uuid, Error> {
    let user_id = if raw == "me" {
        caller.user_id
    } else {
        keel_platform::serve::rpc::parse_id(field, raw)?
    };
    if user_id != caller.user_id && !caller.is_admin() {
        return Err(Error::permission_denied(
            "NOT_YOUR_PREFERENCES",
            "you may read and change only your own preferences",
        ));
    }
    Ok(user_id)
}

fn channels(field: &str, raw: &[i32]) -> Result<Vec<Channel>, keel_platform::error::FieldViolation> {
    let mut chosen = Vec::with_capacity(raw.len());
    for (i, value) in raw.iter().enumerate() {
        let channel = Channel::parse(&format!("{field}[{i}]"), *value)?;
        if chosen.contains(&channel) {
            return Err(keel_platform::error::FieldViolation {
                field: format!("{field}[{i}]"),
                description: format!("{} is listed twice", channel.to_proto().as_str_name()),
            });
        }
        chosen.push(channel);
    }
    Ok(chosen)
}

fn overrides(
    raw: &[pb::EventTypeChannels],
) -> Result<BTreeMap<Topic, Vec<Channel>>, keel_platform::error::FieldViolation> {
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

fn to_proto(user_id: Uuid, row: Option<&PreferencesRow>) -> Result<pb::Preferences, Error> {
    let chosen = stored(row)?;
    Ok(pb::Preferences {
        user_id: user_id.to_string(),
        default_channels: chosen.default_channels.iter().map(|c| c.to_proto() as i32).collect(),
        event_types: chosen
            .overrides
            .iter()
            .map(|(topic, channels)| pb::EventTypeChannels {
                event_type: topic.as_str().to_owned(),
                channels: channels.iter().map(|c| c.to_proto() as i32).collect(),
            })
            .collect(),
        etag: etag(row.map_or(0, |row| row.version)),
        update_time: row.map(|row| timestamp(row.update_time)),
    })
}
