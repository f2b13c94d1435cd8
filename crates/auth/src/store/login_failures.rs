//! The `login_failures` table: the failed-login throttle's memory.

use chrono::{DateTime, Utc};
use diesel::{ExpressionMethods as _, QueryDsl as _};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};

use super::QueryResult;
use crate::schema::login_failures;

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
