//! Each user's choice of channels per topic: reading and changing it, and
//! the one-click unsubscribe a mail's link makes. A user who never chose
//! has the defaults (everything on every channel).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use keel_platform::Error;
use uuid::Uuid;

use super::Notifications;
use crate::{
    domain::{Channel, Preferences, Topic},
    email::unsubscribe,
    store::preferences::{self, PreferencesRow},
};

/// A user's preferences, with the version their etag carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPreferences {
    /// Whose they are.
    pub user_id: Uuid,
    /// The channels chosen.
    pub chosen: Preferences,
    /// Bumped on every change; 0 for a user who never chose.
    pub version: i64,
    /// When they last changed; `None` for a user who never chose.
    pub update_time: Option<DateTime<Utc>>,
}

impl UserPreferences {
    fn of(user_id: Uuid, row: Option<&PreferencesRow>) -> Result<Self, Error> {
        Ok(Self {
            user_id,
            chosen: stored(row)?,
            version: row.map_or(0, |row| row.version),
            update_time: row.map(|row| row.update_time),
        })
    }
}

/// What an update changes, read and checked; `None` leaves a part as it
/// is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreferencesChange {
    /// New default channels.
    pub default_channels: Option<Vec<Channel>>,
    /// New per-topic choices, replacing all the old ones.
    pub overrides: Option<BTreeMap<Topic, Vec<Channel>>>,
}

impl Notifications {
    /// The user's preferences.
    pub async fn preferences(&self, user_id: Uuid) -> Result<UserPreferences, Error> {
        let mut conn = self.pool.get().await?;
        let row = preferences::get(&mut conn, user_id).await?;
        UserPreferences::of(user_id, row.as_ref())
    }

    /// Applies `change` to the user's preferences, if their version still is
    /// `expected` (when given): ABORTED, ETAG_MISMATCH otherwise.
    pub async fn update_preferences(
        &self,
        user_id: Uuid,
        expected: Option<i64>,
        change: PreferencesChange,
    ) -> Result<UserPreferences, Error> {
        let mut conn = self.pool.get().await?;
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
                if let Some(default_channels) = change.default_channels {
                    chosen.default_channels = default_channels;
                }
                if let Some(overrides) = change.overrides {
                    chosen.overrides = overrides;
                }
                save(conn, user_id, &chosen).await
            })
            .await?;
        UserPreferences::of(user_id, Some(&row))
    }

    /// Switches off the mail an unsubscribe link's `token` names, and
    /// returns its topic; UNAUTHENTICATED, BAD_UNSUBSCRIBE_TOKEN for a
    /// token Keel did not sign.
    pub async fn unsubscribe(&self, token: &str) -> Result<Topic, Error> {
        let (user_id, topic) = unsubscribe::verify(self.link_key.expose(), token).ok_or_else(|| {
            Error::unauthenticated("BAD_UNSUBSCRIBE_TOKEN", "this unsubscribe link is not one Keel signed")
        })?;
        let mut conn = self.pool.get().await?;
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
        Ok(topic)
    }
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
