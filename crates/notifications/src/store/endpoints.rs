//! Users' webhook endpoints.

use chrono::{DateTime, Utc};
use diesel::{
    AsChangeset, BoolExpressionMethods as _, ExpressionMethods as _, Insertable, OptionalExtension as _, QueryDsl as _,
    QueryResult, Queryable, Selectable, SelectableHelper as _,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use keel_platform::db::SecretBytes;
use uuid::Uuid;

use crate::schema::webhook_endpoints;

/// An endpoint as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_endpoints)]
pub struct EndpointRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: String,
    pub secret: SecretBytes,
    pub previous_secret: Option<SecretBytes>,
    pub previous_secret_expire_time: Option<DateTime<Utc>>,
    pub sealed_with: Option<String>,
    pub failing_since: Option<DateTime<Utc>>,
    pub disable_time: Option<DateTime<Utc>>,
    pub disable_reason: String,
    pub create_time: DateTime<Utc>,
}

impl EndpointRow {
    /// Whether it takes `event_type` (an empty list takes every type).
    pub fn wants(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type)
    }
}

/// An endpoint to add.
#[derive(Debug, Insertable)]
#[diesel(table_name = webhook_endpoints)]
pub struct NewEndpoint<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub url: &'a str,
    pub event_types: &'a [String],
    pub description: &'a str,
    pub secret: &'a SecretBytes,
    pub sealed_with: Option<&'a str>,
}

/// Adds an endpoint.
pub async fn insert(conn: &mut AsyncPgConnection, new: &NewEndpoint<'_>) -> QueryResult<EndpointRow> {
    diesel::insert_into(webhook_endpoints::table)
        .values(new)
        .returning(EndpointRow::as_returning())
        .get_result(conn)
        .await
}

/// One endpoint.
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<EndpointRow>> {
    webhook_endpoints::table
        .find(id)
        .select(EndpointRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// One endpoint, locked until commit.
pub async fn lock(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<EndpointRow>> {
    webhook_endpoints::table
        .find(id)
        .select(EndpointRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// A page of endpoints, oldest first, after `after`: one user's, or all.
pub async fn page(
    conn: &mut AsyncPgConnection,
    owner: Option<Uuid>,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<EndpointRow>> {
    let mut query = webhook_endpoints::table
        .select(EndpointRow::as_select())
        .order_by(webhook_endpoints::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(owner) = owner {
        query = query.filter(webhook_endpoints::user_id.eq(owner));
    }
    if let Some(after) = after {
        query = query.filter(webhook_endpoints::id.gt(after));
    }
    query.load(conn).await
}

/// The user's enabled endpoints.
pub async fn enabled_of(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Vec<EndpointRow>> {
    webhook_endpoints::table
        .filter(
            webhook_endpoints::user_id
                .eq(user_id)
                .and(webhook_endpoints::disable_time.is_null()),
        )
        .select(EndpointRow::as_select())
        .order_by(webhook_endpoints::id.asc())
        .load(conn)
        .await
}

/// Deletes an endpoint; returns whether it existed.
pub async fn delete(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<bool> {
    let deleted = diesel::delete(webhook_endpoints::table.find(id)).execute(conn).await?;
    Ok(deleted == 1)
}

/// An endpoint's new secret, with the old one and until when it still signs.
#[derive(AsChangeset)]
// None must write NULL here, not leave the column as it is.
#[diesel(table_name = webhook_endpoints, treat_none_as_null = true)]
struct SecretRotation<'a> {
    secret: &'a SecretBytes,
    previous_secret: Option<&'a SecretBytes>,
    previous_secret_expire_time: Option<DateTime<Utc>>,
    sealed_with: Option<&'a str>,
}

/// Replaces the secret, keeping the old one signing until `previous_until`.
pub async fn rotate(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    secret: &SecretBytes,
    previous: Option<&SecretBytes>,
    previous_until: Option<DateTime<Utc>>,
    sealed_with: Option<&str>,
) -> QueryResult<EndpointRow> {
    diesel::update(webhook_endpoints::table.find(id))
        .set(SecretRotation {
            secret,
            previous_secret: previous,
            previous_secret_expire_time: previous_until,
            sealed_with,
        })
        .returning(EndpointRow::as_returning())
        .get_result(conn)
        .await
}

/// Why an endpoint was disabled, recorded as it is.
#[derive(AsChangeset)]
#[diesel(table_name = webhook_endpoints)]
struct Disabling<'a> {
    disable_reason: &'a str,
}

/// Stops deliveries to an enabled endpoint; returns whether this call did.
pub async fn disable(conn: &mut AsyncPgConnection, id: Uuid, reason: &str) -> QueryResult<bool> {
    let changed = diesel::update(
        webhook_endpoints::table.filter(
            webhook_endpoints::id
                .eq(id)
                .and(webhook_endpoints::disable_time.is_null()),
        ),
    )
    .set((
        webhook_endpoints::disable_time.eq(diesel::dsl::now),
        Disabling { disable_reason: reason },
    ))
    .execute(conn)
    .await?;
    Ok(changed == 1)
}

/// Records a failed delivery; returns since when the endpoint has failed.
pub async fn record_failure(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<DateTime<Utc>>> {
    diesel::update(webhook_endpoints::table.find(id))
        .set(webhook_endpoints::failing_since.eq(diesel::dsl::sql::<
            diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
        >("coalesce(failing_since, now())")))
        .returning(webhook_endpoints::failing_since)
        .get_result(conn)
        .await
        .optional()
        .map(Option::flatten)
}

/// Records a delivery that went through.
pub async fn record_success(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<()> {
    diesel::update(
        webhook_endpoints::table.filter(
            webhook_endpoints::id
                .eq(id)
                .and(webhook_endpoints::failing_since.is_not_null()),
        ),
    )
    .set(webhook_endpoints::failing_since.eq(None::<DateTime<Utc>>))
    .execute(conn)
    .await?;
    Ok(())
}
