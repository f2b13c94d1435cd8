//! Auth's queries, one function per question or change.

use chrono::{DateTime, Utc};
use diesel::{
    ExpressionMethods as _, JoinOnDsl as _, OptionalExtension as _, QueryDsl as _, Queryable, Selectable,
    SelectableHelper as _,
    result::{DatabaseErrorKind, Error as DieselError},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::{
    keys::{NewKey, StoredKey},
    schema::{login_failures, one_time_tokens, refresh_tokens, sessions, signing_keys, users},
};

type QueryResult<T> = Result<T, DieselError>;

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

/// A session as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = sessions)]
pub struct SessionRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub user_agent: String,
    pub client_address: String,
}

/// A refresh token as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = refresh_tokens)]
pub struct RefreshTokenRow {
    pub session_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub spent_at: Option<DateTime<Utc>>,
}

/// What a new user needs.
#[derive(Debug)]
pub struct NewUser<'a> {
    pub id: Uuid,
    pub email: &'a str,
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

pub async fn insert_user(conn: &mut AsyncPgConnection, user: NewUser<'_>) -> Result<UserRow, InsertUserError> {
    diesel::insert_into(users::table)
        .values((
            users::id.eq(user.id),
            users::email.eq(user.email),
            users::password_hash.eq(user.password_hash),
            users::roles.eq(user.roles),
            users::register_request_id.eq(user.register_request_id),
        ))
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

pub async fn find_user(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<UserRow>> {
    users::table
        .find(id)
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn find_user_by_email(conn: &mut AsyncPgConnection, email: &str) -> QueryResult<Option<UserRow>> {
    users::table
        .filter(users::email.eq(email))
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn find_user_by_register_request(
    conn: &mut AsyncPgConnection,
    request_id: &str,
) -> QueryResult<Option<UserRow>> {
    users::table
        .filter(users::register_request_id.eq(request_id))
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
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
        .set((users::password_hash.eq(new), users::updated_at.eq(diesel::dsl::now)))
        .execute(conn)
        .await?;
    Ok(changed == 1)
}

pub async fn set_password_hash(conn: &mut AsyncPgConnection, user_id: Uuid, hash: &str) -> QueryResult<()> {
    diesel::update(users::table.find(user_id))
        .set((users::password_hash.eq(hash), users::updated_at.eq(diesel::dsl::now)))
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_roles(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    roles: Vec<String>,
) -> QueryResult<Option<UserRow>> {
    diesel::update(users::table.find(user_id))
        .set((users::roles.eq(roles), users::updated_at.eq(diesel::dsl::now)))
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}

pub async fn disable_user(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Option<UserRow>> {
    diesel::update(users::table.find(user_id))
        .set((users::disabled.eq(true), users::updated_at.eq(diesel::dsl::now)))
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}

pub async fn mark_email_verified(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Option<UserRow>> {
    diesel::update(users::table.find(user_id))
        .set((users::email_verified.eq(true), users::updated_at.eq(diesel::dsl::now)))
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// What a new session needs.
#[derive(Debug)]
pub struct NewSession<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub user_agent: &'a str,
    pub client_address: &'a str,
}

/// Starts a session with its first refresh token, in one statement (one
/// round trip: sign-in is hot), but only while the user still has the
/// password hash that was just verified and is not disabled. The user row is
/// share-locked, so a concurrent password change or disabling either waits
/// for this session (and then ends it) or makes this insert find nothing.
/// Returns whether the session was created.
pub async fn insert_session(
    conn: &mut AsyncPgConnection,
    session: NewSession<'_>,
    verified_password_hash: &str,
    refresh_token_hash: &[u8],
) -> QueryResult<bool> {
    use diesel::sql_types::{Bytea, Text, Timestamptz, Uuid as SqlUuid};
    let inserted = diesel::sql_query(
        "WITH session AS ( \
             INSERT INTO sessions (id, user_id, expires_at, user_agent, client_address) \
             SELECT $1, id, $3, $4, $5 FROM users \
             WHERE id = $2 AND password_hash = $6 AND NOT disabled FOR SHARE \
             RETURNING id, expires_at) \
         INSERT INTO refresh_tokens (token_hash, session_id, expires_at) \
         SELECT $7, id, expires_at FROM session",
    )
    .bind::<SqlUuid, _>(session.id)
    .bind::<SqlUuid, _>(session.user_id)
    .bind::<Timestamptz, _>(session.expires_at)
    .bind::<Text, _>(session.user_agent)
    .bind::<Text, _>(session.client_address)
    .bind::<Text, _>(verified_password_hash)
    .bind::<Bytea, _>(refresh_token_hash)
    .execute(conn)
    .await?;
    Ok(inserted == 1)
}

pub async fn insert_refresh_token(
    conn: &mut AsyncPgConnection,
    token_hash: &[u8],
    session_id: Uuid,
    expires_at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::insert_into(refresh_tokens::table)
        .values((
            refresh_tokens::token_hash.eq(token_hash),
            refresh_tokens::session_id.eq(session_id),
            refresh_tokens::expires_at.eq(expires_at),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// The refresh token and its session, both locked until the transaction ends,
/// so two refreshes with one token cannot both succeed.
pub async fn lock_refresh_token(
    conn: &mut AsyncPgConnection,
    token_hash: &[u8],
) -> QueryResult<Option<(RefreshTokenRow, SessionRow)>> {
    refresh_tokens::table
        .inner_join(sessions::table.on(sessions::id.eq(refresh_tokens::session_id)))
        .filter(refresh_tokens::token_hash.eq(token_hash))
        .select((RefreshTokenRow::as_select(), SessionRow::as_select()))
        .for_update()
        .first(conn)
        .await
        .optional()
}

pub async fn spend_refresh_token(conn: &mut AsyncPgConnection, token_hash: &[u8]) -> QueryResult<()> {
    diesel::update(refresh_tokens::table.find(token_hash))
        .set(refresh_tokens::spent_at.eq(diesel::dsl::now))
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn extend_session(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    expires_at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(sessions::table.find(session_id))
        .set((
            sessions::last_used_at.eq(diesel::dsl::now),
            sessions::expires_at.eq(expires_at),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Ends a session (a no-op if it has ended). Returns whether it was active.
pub async fn revoke_session(conn: &mut AsyncPgConnection, session_id: Uuid, reason: &str) -> QueryResult<bool> {
    let changed = diesel::update(sessions::table.find(session_id).filter(sessions::revoked_at.is_null()))
        .set((
            sessions::revoked_at.eq(diesel::dsl::now),
            sessions::revoke_reason.eq(reason),
        ))
        .execute(conn)
        .await?;
    Ok(changed > 0)
}

/// Ends every active session of a user but `keep`. Returns how many ended.
pub async fn revoke_user_sessions(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    keep: Option<Uuid>,
    reason: &str,
) -> QueryResult<usize> {
    let active = sessions::table
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoked_at.is_null())
        .filter(sessions::expires_at.gt(diesel::dsl::now));
    let set = (
        sessions::revoked_at.eq(diesel::dsl::now),
        sessions::revoke_reason.eq(reason),
    );
    match keep {
        Some(keep) => {
            diesel::update(active.filter(sessions::id.ne(keep)))
                .set(set)
                .execute(conn)
                .await
        }
        None => diesel::update(active).set(set).execute(conn).await,
    }
}

/// A user's active sessions, newest first, after the cursor.
pub async fn active_sessions(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<SessionRow>> {
    let mut query = sessions::table
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoked_at.is_null())
        .filter(sessions::expires_at.gt(diesel::dsl::now))
        .select(SessionRow::as_select())
        .order(sessions::id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(before) = before {
        query = query.filter(sessions::id.lt(before));
    }
    query.load(conn).await
}

pub async fn find_session(conn: &mut AsyncPgConnection, session_id: Uuid) -> QueryResult<Option<SessionRow>> {
    sessions::table
        .find(session_id)
        .select(SessionRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The purposes of one-time tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPurpose {
    PasswordReset,
    EmailVerification,
}

impl TokenPurpose {
    fn as_str(self) -> &'static str {
        match self {
            TokenPurpose::PasswordReset => "password_reset",
            TokenPurpose::EmailVerification => "email_verification",
        }
    }
}

pub async fn insert_one_time_token(
    conn: &mut AsyncPgConnection,
    token_hash: &[u8],
    user_id: Uuid,
    purpose: TokenPurpose,
    expires_at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::insert_into(one_time_tokens::table)
        .values((
            one_time_tokens::token_hash.eq(token_hash),
            one_time_tokens::user_id.eq(user_id),
            one_time_tokens::purpose.eq(purpose.as_str()),
            one_time_tokens::expires_at.eq(expires_at),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// The user a live (unused, unexpired) token belongs to, without using it.
pub async fn peek_one_time_token(
    conn: &mut AsyncPgConnection,
    token_hash: &[u8],
    purpose: TokenPurpose,
) -> QueryResult<Option<Uuid>> {
    one_time_tokens::table
        .filter(one_time_tokens::token_hash.eq(token_hash))
        .filter(one_time_tokens::purpose.eq(purpose.as_str()))
        .filter(one_time_tokens::used_at.is_null())
        .filter(one_time_tokens::expires_at.gt(diesel::dsl::now))
        .select(one_time_tokens::user_id)
        .first(conn)
        .await
        .optional()
}

/// Uses a live token, atomically: of two concurrent callers, one wins.
pub async fn use_one_time_token(
    conn: &mut AsyncPgConnection,
    token_hash: &[u8],
    purpose: TokenPurpose,
) -> QueryResult<Option<Uuid>> {
    diesel::update(
        one_time_tokens::table
            .filter(one_time_tokens::token_hash.eq(token_hash))
            .filter(one_time_tokens::purpose.eq(purpose.as_str()))
            .filter(one_time_tokens::used_at.is_null())
            .filter(one_time_tokens::expires_at.gt(diesel::dsl::now)),
    )
    .set(one_time_tokens::used_at.eq(diesel::dsl::now))
    .returning(one_time_tokens::user_id)
    .get_result(conn)
    .await
    .optional()
}

/// Ends every live token of a purpose for a user (a new one replaces them).
pub async fn expire_one_time_tokens(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    purpose: TokenPurpose,
) -> QueryResult<()> {
    diesel::update(
        one_time_tokens::table
            .filter(one_time_tokens::user_id.eq(user_id))
            .filter(one_time_tokens::purpose.eq(purpose.as_str()))
            .filter(one_time_tokens::used_at.is_null()),
    )
    .set(one_time_tokens::used_at.eq(diesel::dsl::now))
    .execute(conn)
    .await?;
    Ok(())
}

/// One subject's row of a recorded attempt.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct RecordedAttempt {
    /// The failure row recorded for this attempt.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub id: i64,
    /// Failures the subject had since the window began, before this attempt.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub prior_failures: i64,
    /// When the oldest of those was.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    pub oldest: Option<DateTime<Utc>>,
}

/// Records an attempt as a failure of each subject, and returns, per
/// subject, the failures it had since `since` before this one: one round
/// trip, as every login asks. (The statement's snapshot does not see its own
/// inserts, so the counts are of earlier attempts.)
pub async fn record_attempt(
    conn: &mut AsyncPgConnection,
    subjects: &[&str],
    since: DateTime<Utc>,
) -> QueryResult<Vec<RecordedAttempt>> {
    use diesel::sql_types::{Array, Text, Timestamptz};
    let subjects: Vec<String> = subjects.iter().map(|s| (*s).to_owned()).collect();
    diesel::sql_query(
        "WITH recorded AS ( \
             INSERT INTO login_failures (subject) SELECT unnest($1::text[]) RETURNING id, subject) \
         SELECT r.id, \
                (SELECT count(*) FROM login_failures f WHERE f.subject = r.subject AND f.failed_at > $2) \
                    AS prior_failures, \
                (SELECT min(f.failed_at) FROM login_failures f WHERE f.subject = r.subject AND f.failed_at > $2) \
                    AS oldest \
         FROM recorded r",
    )
    .bind::<Array<Text>, _>(subjects)
    .bind::<Timestamptz, _>(since)
    .load(conn)
    .await
}

/// Deletes the subjects' failures older than `since` (they no longer count).
pub async fn prune_failures(conn: &mut AsyncPgConnection, subjects: &[&str], since: DateTime<Utc>) -> QueryResult<()> {
    diesel::delete(
        login_failures::table
            .filter(login_failures::subject.eq_any(subjects))
            .filter(login_failures::failed_at.le(since)),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets failures recorded for an attempt that turned out to succeed.
pub async fn forget_failures(conn: &mut AsyncPgConnection, ids: &[i64]) -> QueryResult<()> {
    diesel::delete(login_failures::table.filter(login_failures::id.eq_any(ids)))
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn clear_failures(conn: &mut AsyncPgConnection, subject: &str) -> QueryResult<()> {
    diesel::delete(login_failures::table.filter(login_failures::subject.eq(subject)))
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn newest_signing_keys(conn: &mut AsyncPgConnection, count: i64) -> QueryResult<Vec<StoredKey>> {
    signing_keys::table
        .select(StoredKey::as_select())
        .order(signing_keys::created_at.desc())
        .limit(count)
        .load(conn)
        .await
}

pub async fn insert_signing_key(conn: &mut AsyncPgConnection, key: &NewKey) -> QueryResult<()> {
    diesel::insert_into(signing_keys::table)
        .values((
            signing_keys::kid.eq(&key.kid),
            signing_keys::private_key.eq(&key.private_key),
            signing_keys::public_key.eq(&key.public_key),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(())
}
