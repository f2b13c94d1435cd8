//! The `provider_sign_ins` and `sign_in_codes` tables: sign-ins sent to a
//! provider and not yet back, and the one-time codes a finished one hands
//! the application. Both are taken once (deleted as they are read).

use chrono::{DateTime, Utc};
use diesel::{
    ExpressionMethods as _, Insertable, OptionalExtension as _, QueryDsl as _, QueryResult, Queryable, Selectable,
    SelectableHelper as _,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::schema::{provider_sign_ins, sign_in_codes};

/// A sign-in sent to a provider.
#[derive(Debug, Clone, Insertable, Queryable, Selectable)]
#[diesel(table_name = provider_sign_ins)]
pub struct PendingSignIn {
    /// SHA-256 of the `state` sent.
    pub state_hash: Vec<u8>,
    pub provider: String,
    /// SHA-256 of the browser's cookie.
    pub browser_hash: Vec<u8>,
    pub nonce: String,
    pub pkce_verifier: String,
    /// Where the browser goes back to (already checked against the list).
    pub return_url: String,
    /// The application's S256 challenge for the code exchange.
    pub app_code_challenge: String,
    /// Set when a signed-in user links the provider.
    pub link_user_id: Option<Uuid>,
    pub expires_at: DateTime<Utc>,
}

/// Stores a sign-in sent to a provider.
pub async fn insert(conn: &mut AsyncPgConnection, pending: &PendingSignIn) -> QueryResult<()> {
    diesel::insert_into(provider_sign_ins::table)
        .values(pending)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes the sign-in whose `state` hashes to `state_hash` (it is gone
/// afterwards, expired or not: a `state` is spent once).
pub async fn take(conn: &mut AsyncPgConnection, state_hash: &[u8]) -> QueryResult<Option<PendingSignIn>> {
    diesel::delete(provider_sign_ins::table.find(state_hash))
        .returning(PendingSignIn::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// A code a finished sign-in hands the application.
#[derive(Debug, Clone, Insertable, Queryable, Selectable)]
#[diesel(table_name = sign_in_codes)]
pub struct SignInCode {
    /// SHA-256 of the code.
    pub code_hash: Vec<u8>,
    pub user_id: Uuid,
    pub provider: String,
    pub app_code_challenge: String,
    pub expires_at: DateTime<Utc>,
}

/// Stores a sign-in code.
pub async fn insert_code(conn: &mut AsyncPgConnection, code: &SignInCode) -> QueryResult<()> {
    diesel::insert_into(sign_in_codes::table)
        .values(code)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes the code that hashes to `code_hash` (spent, whatever comes next).
pub async fn take_code(conn: &mut AsyncPgConnection, code_hash: &[u8]) -> QueryResult<Option<SignInCode>> {
    diesel::delete(sign_in_codes::table.find(code_hash))
        .returning(SignInCode::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// Deletes sign-ins and codes that expired before `before`.
pub async fn prune(conn: &mut AsyncPgConnection, before: DateTime<Utc>) -> QueryResult<usize> {
    let sign_ins = diesel::delete(provider_sign_ins::table.filter(provider_sign_ins::expires_at.lt(before)))
        .execute(conn)
        .await?;
    let codes = diesel::delete(sign_in_codes::table.filter(sign_in_codes::expires_at.lt(before)))
        .execute(conn)
        .await?;
    Ok(sign_ins + codes)
}
