//! The `throttle_counters` table: one row per throttled subject (a login's
//! account, address or account-and-address; a caller of Register,
//! RequestPasswordReset or IssueServiceToken).

use chrono::{DateTime, Utc};
use diesel::{
    QueryResult,
    sql_types::{Array, Double, Integer, Nullable, Text, Timestamptz},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};

/// A counter as it stands, with the database's clock.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct CounterRow {
    #[diesel(sql_type = Text)]
    pub subject: String,
    #[diesel(sql_type = Integer)]
    pub hits: i32,
    #[diesel(sql_type = Timestamptz)]
    pub window_start: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub not_before: Option<DateTime<Utc>>,
    /// The transaction's `now()`: every replica judges windows by one clock.
    #[diesel(sql_type = Timestamptz)]
    pub now: DateTime<Utc>,
}

/// A counter to lock, and the account it belongs to (if any).
#[derive(Debug, Clone, Copy)]
pub struct CounterKey<'a> {
    pub subject: &'a str,
    pub account: Option<&'a str>,
}

/// A counter's new state.
#[derive(Debug, Clone)]
pub struct CounterUpdate {
    pub subject: String,
    pub hits: i32,
    pub window_start: DateTime<Utc>,
    pub not_before: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
}

/// Locks the counters of `keys` until the transaction ends, creating empty
/// ones (kept for `ttl_secs`) where there are none. Rows are taken in subject
/// order, so concurrent callers queue instead of deadlocking.
pub async fn lock(
    conn: &mut AsyncPgConnection,
    keys: &[CounterKey<'_>],
    ttl_secs: f64,
) -> QueryResult<Vec<CounterRow>> {
    let mut keys = keys.to_vec();
    keys.sort_by(|a, b| a.subject.cmp(b.subject));
    let subjects: Vec<&str> = keys.iter().map(|k| k.subject).collect();
    let accounts: Vec<Option<&str>> = keys.iter().map(|k| k.account).collect();
    // DO UPDATE (a no-op) rather than DO NOTHING: it locks and returns
    // existing rows too.
    diesel::sql_query(
        "INSERT INTO throttle_counters AS c (subject, account, expires_at) \
         SELECT k.subject, k.account, now() + $3 * interval '1 second' \
         FROM unnest($1::text[], $2::text[]) AS k(subject, account) ORDER BY k.subject \
         ON CONFLICT (subject) DO UPDATE SET hits = c.hits \
         RETURNING c.subject, c.hits, c.window_start, c.not_before, now() AS now",
    )
    .bind::<Array<Text>, _>(subjects)
    .bind::<Array<Nullable<Text>>, _>(accounts)
    .bind::<Double, _>(ttl_secs)
    .load(conn)
    .await
}

/// Writes counters locked by [`lock`].
pub async fn save(conn: &mut AsyncPgConnection, updates: &[CounterUpdate]) -> QueryResult<()> {
    let subjects: Vec<&str> = updates.iter().map(|u| u.subject.as_str()).collect();
    let hits: Vec<i32> = updates.iter().map(|u| u.hits).collect();
    let starts: Vec<DateTime<Utc>> = updates.iter().map(|u| u.window_start).collect();
    let not_before: Vec<Option<DateTime<Utc>>> = updates.iter().map(|u| u.not_before).collect();
    let expires: Vec<DateTime<Utc>> = updates.iter().map(|u| u.expires_at).collect();
    diesel::sql_query(
        "UPDATE throttle_counters c \
         SET hits = u.hits, window_start = u.window_start, not_before = u.not_before, expires_at = u.expires_at \
         FROM unnest($1::text[], $2::integer[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[]) \
             AS u(subject, hits, window_start, not_before, expires_at) \
         WHERE c.subject = u.subject",
    )
    .bind::<Array<Text>, _>(subjects)
    .bind::<Array<Integer>, _>(hits)
    .bind::<Array<Timestamptz>, _>(starts)
    .bind::<Array<Nullable<Timestamptz>>, _>(not_before)
    .bind::<Array<Timestamptz>, _>(expires)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes one counter.
pub async fn delete(conn: &mut AsyncPgConnection, subject: &str) -> QueryResult<()> {
    diesel::sql_query("DELETE FROM throttle_counters WHERE subject = $1")
        .bind::<Text, _>(subject)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes one back from a counter (an attempt counted in advance that turned
/// out not to count).
pub async fn decrement(conn: &mut AsyncPgConnection, subject: &str) -> QueryResult<()> {
    diesel::sql_query("UPDATE throttle_counters SET hits = greatest(hits - 1, 0) WHERE subject = $1")
        .bind::<Text, _>(subject)
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes every counter of `account` (its own and its per-address ones),
/// locking them in subject order as [`lock`] does. Returns how many.
pub async fn clear_account(conn: &mut AsyncPgConnection, account: &str) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM throttle_counters WHERE subject IN ( \
             SELECT subject FROM throttle_counters WHERE account = $1 ORDER BY subject FOR UPDATE)",
    )
    .bind::<Text, _>(account)
    .execute(conn)
    .await
}

/// Counts one call against each of `subjects` in one statement, starting a
/// new window of `window_secs` for a subject whose last one has passed, and
/// returns the counts including this call. (Calls over the limit count too:
/// they do not move the window, so a refused caller is free when it ends.)
pub async fn count_calls(
    conn: &mut AsyncPgConnection,
    subjects: &[&str],
    window_secs: f64,
) -> QueryResult<Vec<CounterRow>> {
    let mut subjects = subjects.to_vec();
    subjects.sort_unstable();
    diesel::sql_query(
        "INSERT INTO throttle_counters AS c (subject, hits, expires_at) \
         SELECT s, 1, now() + $2 * interval '1 second' FROM unnest($1::text[]) AS s ORDER BY s \
         ON CONFLICT (subject) DO UPDATE SET \
             hits = CASE WHEN c.window_start <= now() - $2 * interval '1 second' THEN 1 \
                         ELSE least(c.hits, 1000000000) + 1 END, \
             window_start = CASE WHEN c.window_start <= now() - $2 * interval '1 second' THEN now() \
                                 ELSE c.window_start END, \
             expires_at = CASE WHEN c.window_start <= now() - $2 * interval '1 second' \
                               THEN now() + $2 * interval '1 second' ELSE c.expires_at END \
         RETURNING c.subject, c.hits, c.window_start, c.not_before, now() AS now",
    )
    .bind::<Array<Text>, _>(subjects)
    .bind::<Double, _>(window_secs)
    .load(conn)
    .await
}

/// Deletes counters that no longer mean anything. Returns how many.
pub async fn delete_expired(conn: &mut AsyncPgConnection) -> QueryResult<usize> {
    diesel::sql_query("DELETE FROM throttle_counters WHERE expires_at < now()")
        .execute(conn)
        .await
}
