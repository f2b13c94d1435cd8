//! The `external_identities` table: a user's accounts at identity
//! providers, keyed by (issuer, subject).

use chrono::{DateTime, Utc};
use diesel::{
    ExpressionMethods as _, Insertable, OptionalExtension as _, QueryDsl as _, QueryResult, Queryable, Selectable,
    SelectableHelper as _,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::schema::external_identities;

/// A linked identity.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = external_identities)]
pub struct IdentityRow {
    pub id: Uuid,
    pub user_id: Uuid,
    /// The configured provider's id.
    pub provider: String,
    pub issuer: String,
    pub subject: String,
    /// The email the provider gave when it was linked.
    pub email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_sign_in_at: DateTime<Utc>,
}

/// A new link.
#[derive(Debug, Insertable)]
#[diesel(table_name = external_identities)]
pub struct NewIdentity<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub provider: &'a str,
    pub issuer: &'a str,
    pub subject: &'a str,
    pub email: Option<&'a str>,
}

/// The identity `subject` at `issuer`, if it is linked.
pub async fn find(conn: &mut AsyncPgConnection, issuer: &str, subject: &str) -> QueryResult<Option<IdentityRow>> {
    external_identities::table
        .filter(external_identities::issuer.eq(issuer))
        .filter(external_identities::subject.eq(subject))
        .select(IdentityRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Links an identity; false when (issuer, subject) is already linked.
pub async fn insert(conn: &mut AsyncPgConnection, identity: &NewIdentity<'_>) -> QueryResult<bool> {
    let inserted = diesel::insert_into(external_identities::table)
        .values(identity)
        .on_conflict((external_identities::issuer, external_identities::subject))
        .do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}

/// Records a sign-in with `id`.
pub async fn touch(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<()> {
    diesel::update(external_identities::table.find(id))
        .set(external_identities::last_sign_in_at.eq(diesel::dsl::now))
        .execute(conn)
        .await?;
    Ok(())
}

/// The user's identities, oldest first.
pub async fn of_user(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Vec<IdentityRow>> {
    external_identities::table
        .filter(external_identities::user_id.eq(user_id))
        .order((external_identities::created_at, external_identities::id))
        .select(IdentityRow::as_select())
        .load(conn)
        .await
}

/// Unlinks the user's identity `id`; false when the user has none by that id.
pub async fn delete(conn: &mut AsyncPgConnection, user_id: Uuid, id: Uuid) -> QueryResult<bool> {
    let deleted = diesel::delete(
        external_identities::table
            .filter(external_identities::id.eq(id))
            .filter(external_identities::user_id.eq(user_id)),
    )
    .execute(conn)
    .await?;
    Ok(deleted == 1)
}
