//! The `login_challenges` table: sign-ins whose first factor passed, waiting
//! for the second.

use chrono::{DateTime, Utc};
use diesel::{
    ExpressionMethods as _, Insertable, OptionalExtension as _, QueryDsl as _, QueryResult, Queryable, Selectable,
    SelectableHelper as _,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::schema::login_challenges;

/// A challenge to store: only its token's hash.
#[derive(Debug, Insertable)]
#[diesel(table_name = login_challenges)]
pub struct NewChallenge<'a> {
    pub token_hash: &'a [u8],
    pub user_id: Uuid,
    /// The SHA-256 of the password hash the first factor was checked
    /// against.
    pub credentials_hash: &'a [u8],
    /// The key of the client address that signed in (an IPv6 client: its
    /// /64).
    pub client_address: &'a str,
    pub expires_at: DateTime<Utc>,
}

/// A live challenge as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = login_challenges)]
pub struct ChallengeRow {
    pub user_id: Uuid,
    pub credentials_hash: Vec<u8>,
    pub client_address: String,
    pub expires_at: DateTime<Utc>,
}

pub async fn insert(conn: &mut AsyncPgConnection, challenge: &NewChallenge<'_>) -> QueryResult<()> {
    diesel::insert_into(login_challenges::table)
        .values(challenge)
        .execute(conn)
        .await?;
    Ok(())
}

/// The live (unexpired) challenge of a token, without using it.
pub async fn peek(conn: &mut AsyncPgConnection, token_hash: &[u8]) -> QueryResult<Option<ChallengeRow>> {
    login_challenges::table
        .find(token_hash)
        .filter(login_challenges::expires_at.gt(diesel::dsl::now))
        .select(ChallengeRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Uses a live challenge: deletes it, atomically (of two callers, one gets
/// it; the other waits for the first's transaction and finds it only if that
/// one rolled back).
pub async fn take(conn: &mut AsyncPgConnection, token_hash: &[u8]) -> QueryResult<Option<ChallengeRow>> {
    diesel::delete(
        login_challenges::table
            .find(token_hash)
            .filter(login_challenges::expires_at.gt(diesel::dsl::now)),
    )
    .returning(ChallengeRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// Deletes the user's expired challenges (a new sign-in tidies up after the
/// ones abandoned before it).
pub async fn delete_expired_of_user(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<usize> {
    diesel::delete(
        login_challenges::table
            .filter(login_challenges::user_id.eq(user_id))
            .filter(login_challenges::expires_at.le(diesel::dsl::now)),
    )
    .execute(conn)
    .await
}

/// Deletes every expired challenge. Returns how many.
pub async fn delete_expired(conn: &mut AsyncPgConnection) -> QueryResult<usize> {
    diesel::delete(login_challenges::table.filter(login_challenges::expires_at.le(diesel::dsl::now)))
        .execute(conn)
        .await
}
