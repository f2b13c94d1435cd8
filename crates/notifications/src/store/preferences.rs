//! Users' channel choices. A user without a row has the defaults.

use chrono::{DateTime, Utc};
use diesel::{
    AsChangeset, ExpressionMethods as _, Insertable, OptionalExtension as _, QueryDsl as _, QueryResult, Queryable,
    Selectable, SelectableHelper as _,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::{domain::Channel, schema::preferences};

/// A user's preferences as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = preferences)]
pub struct PreferencesRow {
    pub user_id: Uuid,
    pub default_channels: Vec<Channel>,
    pub event_types: serde_json::Value,
    pub version: i64,
    pub update_time: DateTime<Utc>,
}

/// A user's first preferences row.
#[derive(Debug, Insertable)]
#[diesel(table_name = preferences)]
struct NewPreferences<'a> {
    user_id: Uuid,
    default_channels: &'a [Channel],
    event_types: &'a serde_json::Value,
}

/// The user's row, if they ever changed their preferences.
pub async fn get(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Option<PreferencesRow>> {
    preferences::table
        .find(user_id)
        .select(PreferencesRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The user's row, locked until commit.
pub async fn lock(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Option<PreferencesRow>> {
    preferences::table
        .find(user_id)
        .select(PreferencesRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// A user's new channel choices, replacing the stored ones.
#[derive(AsChangeset)]
#[diesel(table_name = preferences)]
struct PreferencesChange<'a> {
    default_channels: &'a [Channel],
    event_types: &'a serde_json::Value,
}

/// Writes the user's preferences, bumping the version.
pub async fn put(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    default_channels: &[Channel],
    event_types: &serde_json::Value,
) -> QueryResult<PreferencesRow> {
    diesel::insert_into(preferences::table)
        .values(NewPreferences {
            user_id,
            default_channels,
            event_types,
        })
        .on_conflict(preferences::user_id)
        .do_update()
        .set((
            PreferencesChange {
                default_channels,
                event_types,
            },
            preferences::version.eq(preferences::version + 1),
            preferences::update_time.eq(diesel::dsl::now),
        ))
        .returning(PreferencesRow::as_returning())
        .get_result(conn)
        .await
}
