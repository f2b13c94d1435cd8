//! The `sessions` table and the `refresh_tokens` that keep each session alive.

use chrono::{DateTime, Utc};
use diesel::{
    AsChangeset, ExpressionMethods as _, Insertable, JoinOnDsl as _, OptionalExtension as _, QueryDsl as _,
    QueryResult, Queryable, Selectable, SelectableHelper as _,
};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::schema::{refresh_tokens, sessions};

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

/// What a new session needs.
#[derive(Debug)]
pub struct NewSession<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub user_agent: &'a str,
    pub client_address: &'a str,
}

/// A refresh token to store: only its hash.
#[derive(Insertable)]
#[diesel(table_name = refresh_tokens)]
struct NewRefreshToken<'a> {
    token_hash: &'a [u8],
    session_id: Uuid,
    expires_at: DateTime<Utc>,
}

/// Starts a session with its first refresh token, in one statement (one
/// round trip: sign-in is hot), but only while the user still has the
/// password hash that was just verified and is not disabled. The user row is
/// share-locked, so a concurrent password change or disabling either waits
/// for this session (and then ends it) or makes this insert find nothing.
/// Returns whether the session was created.
pub async fn insert(
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
        .values(NewRefreshToken {
            token_hash,
            session_id,
            expires_at,
        })
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

/// A session's new expiry, when a refresh extends it.
#[derive(AsChangeset)]
#[diesel(table_name = sessions)]
struct SessionExtension {
    expires_at: DateTime<Utc>,
}

pub async fn extend(conn: &mut AsyncPgConnection, session_id: Uuid, expires_at: DateTime<Utc>) -> QueryResult<()> {
    diesel::update(sessions::table.find(session_id))
        .set((
            sessions::last_used_at.eq(diesel::dsl::now),
            SessionExtension { expires_at },
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Why a session ended, recorded when it is revoked.
#[derive(AsChangeset)]
#[diesel(table_name = sessions)]
struct SessionEnd<'a> {
    revoke_reason: &'a str,
}

/// Ends a session (a no-op if it has ended), and with it every access token
/// it issued. Returns whether it was active.
pub async fn revoke(conn: &mut AsyncPgConnection, session_id: Uuid, reason: &str) -> QueryResult<bool> {
    // Both or neither: a session ended without its revocation would leave its
    // tokens working, and a retry would find nothing left to end. (Inside a
    // caller's transaction this is a savepoint.)
    conn.transaction(async |conn| {
        let changed = diesel::update(sessions::table.find(session_id).filter(sessions::revoked_at.is_null()))
            .set((
                sessions::revoked_at.eq(diesel::dsl::now),
                SessionEnd { revoke_reason: reason },
            ))
            .execute(conn)
            .await?;
        if changed > 0 {
            super::revocations::revoke_sessions(conn, &[session_id]).await?;
        }
        Ok(changed > 0)
    })
    .await
}

/// Ends every active session of a user but `keep`, and every access token
/// they issued. Returns how many ended.
pub async fn revoke_all_of_user(
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
        SessionEnd { revoke_reason: reason },
    );
    conn.transaction(async |conn| {
        let ended: Vec<Uuid> = match keep {
            Some(keep) => {
                diesel::update(active.filter(sessions::id.ne(keep)))
                    .set(set)
                    .returning(sessions::id)
                    .get_results(conn)
                    .await?
            }
            None => {
                diesel::update(active)
                    .set(set)
                    .returning(sessions::id)
                    .get_results(conn)
                    .await?
            }
        };
        super::revocations::revoke_sessions(conn, &ended).await?;
        Ok(ended.len())
    })
    .await
}

/// A user's active sessions, newest first, after the cursor.
pub async fn active(
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

pub async fn find(conn: &mut AsyncPgConnection, session_id: Uuid) -> QueryResult<Option<SessionRow>> {
    sessions::table
        .find(session_id)
        .select(SessionRow::as_select())
        .first(conn)
        .await
        .optional()
}
