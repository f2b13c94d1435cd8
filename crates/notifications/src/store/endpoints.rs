//! Users' webhook endpoints.

use chrono::{DateTime, Utc};
use diesel::{
    AsChangeset, BoolExpressionMethods as _, ExpressionMethods as _, Insertable, OptionalExtension as _, QueryDsl as _,
    QueryResult, Queryable, Selectable, SelectableHelper as _,
    deserialize::{self, FromSql, FromSqlRow},
    expression::AsExpression,
    pg::{Pg, PgValue},
    serialize::{self, Output, ToSql},
    sql_types::Binary,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use secrecy::{ExposeSecret as _, SecretSlice};
use uuid::Uuid;

use crate::schema::webhook_endpoints;

/// A signing secret as its row holds it: sealed under the secrets key, or
/// its raw bytes when there is none (see `webhook::SigningSecret::seal`).
/// `Debug` shows neither.
#[derive(Debug, Clone, AsExpression, FromSqlRow)]
#[diesel(sql_type = Binary)]
pub struct StoredSecret(SecretSlice<u8>);

impl StoredSecret {
    /// The stored bytes, to open.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

impl From<Vec<u8>> for StoredSecret {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes.into())
    }
}

impl ToSql<Binary, Pg> for StoredSecret {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <[u8] as ToSql<Binary, Pg>>::to_sql(self.as_bytes(), out)
    }
}

impl FromSql<Binary, Pg> for StoredSecret {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        <Vec<u8> as FromSql<Binary, Pg>>::from_sql(value).map(Self::from)
    }
}

/// An endpoint as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_endpoints)]
pub struct EndpointRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: String,
    pub secret: StoredSecret,
    pub previous_secret: Option<StoredSecret>,
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
    pub secret: &'a StoredSecret,
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
    secret: &'a StoredSecret,
    previous_secret: Option<&'a StoredSecret>,
    previous_secret_expire_time: Option<DateTime<Utc>>,
    sealed_with: Option<&'a str>,
}

/// Replaces the secret, keeping the old one signing until `previous_until`.
pub async fn rotate(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    secret: &StoredSecret,
    previous: Option<&StoredSecret>,
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
