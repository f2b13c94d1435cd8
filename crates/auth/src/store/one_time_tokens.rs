//! The `one_time_tokens` table: password reset and email verification tokens.

use chrono::{DateTime, Utc};
use diesel::{ExpressionMethods as _, Insertable, OptionalExtension as _, QueryDsl as _, QueryResult};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::schema::one_time_tokens;

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

/// A one-time token to store: only its hash.
#[derive(Insertable)]
#[diesel(table_name = one_time_tokens)]
struct NewOneTimeToken<'a> {
    token_hash: &'a [u8],
    user_id: Uuid,
    purpose: &'static str,
    expires_at: DateTime<Utc>,
}

/// Stores a token (by its hash) for `user_id`, live until `expires_at`.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    token_hash: &[u8],
    user_id: Uuid,
    purpose: TokenPurpose,
    expires_at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::insert_into(one_time_tokens::table)
        .values(NewOneTimeToken {
            token_hash,
            user_id,
            purpose: purpose.as_str(),
            expires_at,
        })
        .execute(conn)
        .await?;
    Ok(())
}

/// The user a live (unused, unexpired) token belongs to, without using it.
pub async fn peek(conn: &mut AsyncPgConnection, token_hash: &[u8], purpose: TokenPurpose) -> QueryResult<Option<Uuid>> {
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
pub async fn consume(
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
pub async fn expire_all(conn: &mut AsyncPgConnection, user_id: Uuid, purpose: TokenPurpose) -> QueryResult<()> {
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
