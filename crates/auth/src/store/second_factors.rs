//! The `totp_factors` table and the `totp_recovery_codes` that stand in for
//! a factor's app: a user's second factor.

use chrono::{DateTime, Utc};
use diesel::{
    AsChangeset, ExpressionMethods as _, Insertable, OptionalExtension as _, QueryDsl as _, QueryResult, Queryable,
    Selectable, SelectableHelper as _, upsert::excluded,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use keel_platform::db::SecretBytes;
use uuid::Uuid;

use crate::schema::{totp_factors, totp_recovery_codes};

/// A user's TOTP factor as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = totp_factors)]
pub struct FactorRow {
    pub user_id: Uuid,
    /// Sealed when `sealed_with` names a key.
    pub secret: SecretBytes,
    /// The fingerprint of the key-encryption key that sealed the secret.
    pub sealed_with: Option<String>,
    /// The last time step whose code was accepted.
    pub last_used_step: Option<i64>,
    pub created_at: DateTime<Utc>,
    /// None while the factor waits for its first code.
    pub confirmed_at: Option<DateTime<Utc>>,
}

impl FactorRow {
    /// Whether a first code confirmed it: only then is it asked for.
    pub fn confirmed(&self) -> bool {
        self.confirmed_at.is_some()
    }
}

/// A factor waiting for its first code.
#[derive(Debug, Insertable)]
#[diesel(table_name = totp_factors)]
pub struct NewFactor<'a> {
    pub user_id: Uuid,
    pub secret: &'a SecretBytes,
    pub sealed_with: Option<&'a str>,
}

/// Stores `factor` as the user's pending one, replacing a pending one they
/// had; false (and nothing written) when their factor is confirmed. One
/// statement, so an enrolment racing a confirmation cannot replace the
/// confirmed secret.
pub async fn save_pending(conn: &mut AsyncPgConnection, factor: &NewFactor<'_>) -> QueryResult<bool> {
    let upsert = diesel::insert_into(totp_factors::table)
        .values(factor)
        .on_conflict(totp_factors::user_id)
        .do_update()
        .set((
            totp_factors::secret.eq(excluded(totp_factors::secret)),
            totp_factors::sealed_with.eq(excluded(totp_factors::sealed_with)),
            totp_factors::last_used_step.eq(None::<i64>),
            totp_factors::created_at.eq(diesel::dsl::now),
        ));
    // `ON CONFLICT ... DO UPDATE ... WHERE`: a confirmed row is left alone.
    let written = diesel::query_dsl::methods::FilterDsl::filter(upsert, totp_factors::confirmed_at.is_null())
        .execute(conn)
        .await?;
    Ok(written == 1)
}

pub async fn find(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Option<FactorRow>> {
    totp_factors::table
        .find(user_id)
        .select(FactorRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The user's factor, locked until the transaction ends: two codes checked
/// at once queue, so the second sees the step the first spent.
pub async fn lock(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Option<FactorRow>> {
    totp_factors::table
        .find(user_id)
        .select(FactorRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Whether the user has a confirmed factor (sign-in asks for it).
pub async fn is_confirmed(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        totp_factors::table
            .find(user_id)
            .filter(totp_factors::confirmed_at.is_not_null()),
    ))
    .get_result(conn)
    .await
}

/// The time step of the code just accepted.
#[derive(AsChangeset)]
#[diesel(table_name = totp_factors)]
struct StepSpent {
    last_used_step: i64,
}

/// Records that the code of `step` was accepted.
pub async fn spend_step(conn: &mut AsyncPgConnection, user_id: Uuid, step: i64) -> QueryResult<()> {
    diesel::update(totp_factors::table.find(user_id))
        .set(StepSpent { last_used_step: step })
        .execute(conn)
        .await?;
    Ok(())
}

/// Confirms the factor with the code of `step`.
pub async fn confirm(conn: &mut AsyncPgConnection, user_id: Uuid, step: i64) -> QueryResult<()> {
    diesel::update(totp_factors::table.find(user_id))
        .set((
            StepSpent { last_used_step: step },
            totp_factors::confirmed_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes the factor and, with it, its recovery codes. Returns whether
/// there was one.
pub async fn delete(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<bool> {
    let deleted = diesel::delete(totp_factors::table.find(user_id)).execute(conn).await?;
    Ok(deleted == 1)
}

/// A recovery code to store: only its hash.
#[derive(Insertable)]
#[diesel(table_name = totp_recovery_codes)]
struct NewRecoveryCode<'a> {
    user_id: Uuid,
    code_hash: &'a [u8],
}

/// Replaces the user's recovery codes with `hashes`.
pub async fn replace_recovery_codes(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    hashes: &[Vec<u8>],
) -> QueryResult<()> {
    diesel::delete(totp_recovery_codes::table.filter(totp_recovery_codes::user_id.eq(user_id)))
        .execute(conn)
        .await?;
    let rows: Vec<NewRecoveryCode<'_>> = hashes
        .iter()
        .map(|hash| NewRecoveryCode {
            user_id,
            code_hash: hash,
        })
        .collect();
    diesel::insert_into(totp_recovery_codes::table)
        .values(&rows)
        .execute(conn)
        .await?;
    Ok(())
}

/// Spends an unused recovery code of the user, atomically: of two callers
/// with one code, one wins. Returns whether it was one.
pub async fn spend_recovery_code(conn: &mut AsyncPgConnection, user_id: Uuid, code_hash: &[u8]) -> QueryResult<bool> {
    let spent = diesel::update(
        totp_recovery_codes::table
            .find((user_id, code_hash))
            .filter(totp_recovery_codes::used_at.is_null()),
    )
    .set(totp_recovery_codes::used_at.eq(diesel::dsl::now))
    .execute(conn)
    .await?;
    Ok(spent == 1)
}

/// How many of the user's recovery codes are left.
pub async fn recovery_codes_left(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<i64> {
    totp_recovery_codes::table
        .filter(totp_recovery_codes::user_id.eq(user_id))
        .filter(totp_recovery_codes::used_at.is_null())
        .count()
        .get_result(conn)
        .await
}

/// Every factor whose secret is stored in the clear, locked until the
/// transaction ends (so two replicas starting at once do not both seal one).
pub async fn lock_plain_secrets(conn: &mut AsyncPgConnection) -> QueryResult<Vec<FactorRow>> {
    totp_factors::table
        .filter(totp_factors::sealed_with.is_null())
        .select(FactorRow::as_select())
        .for_update()
        .load(conn)
        .await
}

/// A factor's secret replaced by its sealed form, and the key that sealed it.
#[derive(AsChangeset)]
#[diesel(table_name = totp_factors)]
struct SecretSeal<'a> {
    secret: &'a SecretBytes,
    sealed_with: &'a str,
}

/// Replaces a factor's secret with its sealed form.
pub async fn seal_secret(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    sealed: &SecretBytes,
    sealed_with: &str,
) -> QueryResult<()> {
    diesel::update(totp_factors::table.find(user_id))
        .set(SecretSeal {
            secret: sealed,
            sealed_with,
        })
        .execute(conn)
        .await?;
    Ok(())
}
