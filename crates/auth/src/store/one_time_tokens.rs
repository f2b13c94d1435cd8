//! The `one_time_tokens` table: password reset and email verification tokens.

use chrono::{DateTime, Utc};
use diesel::{ExpressionMethods as _, OptionalExtension as _, QueryDsl as _};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use super::QueryResult;
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
