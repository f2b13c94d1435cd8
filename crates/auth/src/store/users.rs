//! The `users` table: accounts, credentials and roles.

use chrono::{DateTime, Utc};
use diesel::{
    AsChangeset, BoolExpressionMethods as _, ExpressionMethods as _, Insertable, OptionalExtension as _, QueryDsl as _,
    QueryResult, Queryable, Selectable, SelectableHelper as _,
    result::{DatabaseErrorKind, Error as DieselError},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::schema::users;

/// A user as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
    pub roles: Vec<String>,
    pub email_verified: bool,
    pub disabled: bool,
    pub register_request_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// What a new user needs.
#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
pub struct NewUser<'a> {
    pub id: Uuid,
    pub email: &'a str,
    /// The email's confusable skeleton (unique).
    pub email_skeleton: &'a str,
    pub password_hash: &'a str,
    pub roles: Vec<String>,
    pub register_request_id: Option<&'a str>,
}

/// Why a user could not be inserted.
#[derive(Debug, thiserror::Error)]
pub enum InsertUserError {
    #[error("the email is taken")]
    EmailTaken,
    #[error("the request id was used before")]
    RequestIdTaken,
    #[error(transparent)]
    Database(#[from] DieselError),
}

/// Inserts a user; a taken email (or skeleton) or request id is an
/// [`InsertUserError`] of its own.
pub async fn insert(conn: &mut AsyncPgConnection, user: &NewUser<'_>) -> Result<UserRow, InsertUserError> {
    diesel::insert_into(users::table)
        .values(user)
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
        .map_err(|err| match &err {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                if info.constraint_name() == Some("users_register_request_id_key") {
                    InsertUserError::RequestIdTaken
                } else {
                    InsertUserError::EmailTaken
                }
            }
            _ => InsertUserError::Database(err),
        })
}

pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<UserRow>> {
    users::table
        .find(id)
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn find_by_email(conn: &mut AsyncPgConnection, email: &str) -> QueryResult<Option<UserRow>> {
    users::table
        .filter(users::email.eq(email))
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The user whose email is `email` or looks like it (has its skeleton).
pub async fn find_by_email_or_skeleton(
    conn: &mut AsyncPgConnection,
    email: &str,
    skeleton: &str,
) -> QueryResult<Option<UserRow>> {
    users::table
        .filter(users::email.eq(email).or(users::email_skeleton.eq(skeleton)))
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Users stored before emails had skeletons: (id, email).
pub async fn without_skeleton(conn: &mut AsyncPgConnection) -> QueryResult<Vec<(Uuid, String)>> {
    users::table
        .filter(users::email_skeleton.is_null())
        .select((users::id, users::email))
        .order(users::id.asc())
        .load(conn)
        .await
}

/// A user's email replaced by its normalized form, with that form's skeleton.
#[derive(AsChangeset)]
#[diesel(table_name = users)]
struct EmailNormalization<'a> {
    email: &'a str,
    email_skeleton: &'a str,
}

/// Stores a user's normalized email and its skeleton. False when another
/// user already has either (the two then look alike, and an administrator
/// must decide).
pub async fn set_email_skeleton(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    email: &str,
    skeleton: &str,
) -> QueryResult<bool> {
    let updated = diesel::update(users::table.find(user_id))
        .set(EmailNormalization {
            email,
            email_skeleton: skeleton,
        })
        .execute(conn)
        .await;
    match updated {
        Ok(_) => Ok(true),
        Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => Ok(false),
        Err(err) => Err(err),
    }
}

pub async fn find_by_register_request(conn: &mut AsyncPgConnection, request_id: &str) -> QueryResult<Option<UserRow>> {
    users::table
        .filter(users::register_request_id.eq(request_id))
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A user's new password hash.
#[derive(AsChangeset)]
#[diesel(table_name = users)]
struct PasswordChange<'a> {
    password_hash: &'a str,
}

/// Replaces the password hash only if it still is `old` (a login upgrading
/// the hash must not undo a concurrent password change). Returns whether it
/// did.
pub async fn upgrade_password_hash(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    old: &str,
    new: &str,
) -> QueryResult<bool> {
    let changed = diesel::update(users::table.find(user_id).filter(users::password_hash.eq(old)))
        .set((
            PasswordChange { password_hash: new },
            users::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(changed == 1)
}

pub async fn set_password_hash(conn: &mut AsyncPgConnection, user_id: Uuid, hash: &str) -> QueryResult<()> {
    diesel::update(users::table.find(user_id))
        .set((
            PasswordChange { password_hash: hash },
            users::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// A user's new set of roles.
#[derive(AsChangeset)]
#[diesel(table_name = users)]
struct RolesChange {
    roles: Vec<String>,
}

pub async fn set_roles(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    roles: Vec<String>,
) -> QueryResult<Option<UserRow>> {
    diesel::update(users::table.find(user_id))
        .set((RolesChange { roles }, users::updated_at.eq(diesel::dsl::now)))
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// A user disabled.
#[derive(AsChangeset)]
#[diesel(table_name = users)]
struct Disabling {
    disabled: bool,
}

pub async fn disable(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Option<UserRow>> {
    diesel::update(users::table.find(user_id))
        .set((Disabling { disabled: true }, users::updated_at.eq(diesel::dsl::now)))
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// A user's email marked verified.
#[derive(AsChangeset)]
#[diesel(table_name = users)]
struct EmailVerification {
    email_verified: bool,
}

pub async fn mark_email_verified(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Option<UserRow>> {
    diesel::update(users::table.find(user_id))
        .set((
            EmailVerification { email_verified: true },
            users::updated_at.eq(diesel::dsl::now),
        ))
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}
