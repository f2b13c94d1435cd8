//! Claiming due deliveries for one attempt each: the claim takes a lease
//! (`lease_until`) and counts the attempt in one short transaction, with
//! `FOR UPDATE SKIP LOCKED` so workers and replicas share the queue. Each
//! channel claims only its own rows. Webhook claims also keep each endpoint
//! within its limit of deliveries in flight, counted from the leases in the
//! database, so the limit holds across replicas.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::{
    AsChangeset, BoolExpressionMethods as _, ExpressionMethods as _, QueryDsl as _, QueryResult, QueryableByName,
    SelectableHelper as _,
    sql_types::{BigInt, Bool, Text},
};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use super::deliveries::DeliveryRow;
use crate::{
    domain::{Channel, DeliveryState},
    schema::deliveries,
};

/// A delivery claimed for one attempt, held until its lease runs out.
#[derive(AsChangeset)]
#[diesel(table_name = deliveries)]
struct Claim {
    lease_until: DateTime<Utc>,
}

/// A claimed webhook delivery, and whether its endpoint was failing (its
/// last attempt failed) when it was claimed.
#[derive(Debug, Clone)]
pub struct ClaimedWebhook {
    pub delivery: DeliveryRow,
    pub failing: bool,
}

/// The limits a webhook claim respects.
#[derive(Debug, Clone, Copy)]
pub struct WebhookLimits {
    /// The most deliveries to take.
    pub take: i64,
    /// The most of them whose endpoint is failing.
    pub failing: i64,
    /// The most deliveries one endpoint may have in flight, these included.
    pub per_endpoint: i64,
}

/// Serializes webhook claims across replicas, so that each sees the leases
/// the others took and no endpoint goes over its limit.
const WEBHOOK_CLAIM_LOCK: &str = "keel_notifications.webhook_claims";

/// The due webhook deliveries to take, fairest first: an endpoint's first
/// due delivery comes before any endpoint's next one, nothing that would
/// put an endpoint above `$1` in flight, at most `$2` to failing endpoints,
/// at most `$3` in all.
const PICK_WEBHOOKS: &str = "
WITH in_flight AS (
    SELECT target, count(*) AS held
    FROM deliveries
    WHERE channel = 'webhook' AND state = 'pending' AND lease_until IS NOT NULL AND lease_until >= now()
    GROUP BY target
), due AS (
    SELECT d.id, d.next_attempt_time,
           coalesce(f.held, 0) + row_number() OVER (PARTITION BY d.target ORDER BY d.next_attempt_time, d.id) AS nth,
           coalesce(e.failing_since IS NOT NULL, false) AS failing
    FROM deliveries d
    LEFT JOIN in_flight f ON f.target = d.target
    LEFT JOIN webhook_endpoints e ON e.id::text = d.target
    WHERE d.channel = 'webhook' AND d.state = 'pending' AND d.next_attempt_time <= now()
      AND (d.lease_until IS NULL OR d.lease_until < now())
), allowed AS (
    SELECT id, next_attempt_time, nth, failing,
           row_number() OVER (PARTITION BY failing ORDER BY nth, next_attempt_time, id) AS nth_of_kind
    FROM due
    WHERE nth <= $1
)
SELECT id, failing FROM allowed
WHERE NOT failing OR nth_of_kind <= $2
ORDER BY nth, next_attempt_time, id
LIMIT $3";

#[derive(QueryableByName)]
struct Pick {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = Bool)]
    failing: bool,
}

/// Claims up to `limit` due deliveries of `channel`, oldest due first,
/// holding them for `lease`; counts the attempt.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    channel: Channel,
    limit: i64,
    lease: Duration,
) -> QueryResult<Vec<DeliveryRow>> {
    let lease_until = lease_end(lease);
    conn.transaction(async |conn| {
        let due: Vec<Uuid> = deliveries::table
            .filter(deliveries::channel.eq(channel))
            .filter(free())
            .filter(deliveries::next_attempt_time.le(diesel::dsl::now))
            .order_by(deliveries::next_attempt_time.asc())
            .select(deliveries::id)
            .limit(limit)
            .for_update()
            .skip_locked()
            .load(conn)
            .await?;
        take(conn, &due, lease_until).await
    })
    .await
}

/// Claims due webhook deliveries within `limits`, holding them for `lease`;
/// counts each attempt.
pub async fn claim_webhooks(
    conn: &mut AsyncPgConnection,
    limits: WebhookLimits,
    lease: Duration,
) -> QueryResult<Vec<ClaimedWebhook>> {
    let lease_until = lease_end(lease);
    conn.transaction(async |conn| {
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind::<Text, _>(WEBHOOK_CLAIM_LOCK)
            .execute(conn)
            .await?;
        let picks: Vec<Pick> = diesel::sql_query(PICK_WEBHOOKS)
            .bind::<BigInt, _>(limits.per_endpoint)
            .bind::<BigInt, _>(limits.failing)
            .bind::<BigInt, _>(limits.take)
            .load(conn)
            .await?;
        // Rows another writer holds now (an endpoint being deleted) wait
        // for the next claim.
        let ids: Vec<Uuid> = picks.iter().map(|pick| pick.id).collect();
        let lockable: Vec<Uuid> = deliveries::table
            .filter(deliveries::id.eq_any(&ids))
            .filter(free())
            .select(deliveries::id)
            .for_update()
            .skip_locked()
            .load(conn)
            .await?;
        let claimed = take(conn, &lockable, lease_until).await?;
        Ok(claimed
            .into_iter()
            .map(|delivery| {
                let failing = picks.iter().any(|pick| pick.id == delivery.id && pick.failing);
                ClaimedWebhook { delivery, failing }
            })
            .collect())
    })
    .await
}

/// Pending and held by no one (never leased, or its lease ran out).
#[diesel::dsl::auto_type]
fn free() -> _ {
    let pending: DeliveryState = DeliveryState::Pending;
    deliveries::state.eq(pending).and(
        deliveries::lease_until
            .is_null()
            .or(deliveries::lease_until.lt(diesel::dsl::now)),
    )
}

/// Leases the locked deliveries `ids` until `lease_until` and counts their
/// attempt.
async fn take(conn: &mut AsyncPgConnection, ids: &[Uuid], lease_until: DateTime<Utc>) -> QueryResult<Vec<DeliveryRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    diesel::update(deliveries::table.filter(deliveries::id.eq_any(ids)))
        .set((
            Claim { lease_until },
            deliveries::attempt_count.eq(deliveries::attempt_count + 1),
        ))
        .returning(DeliveryRow::as_returning())
        .get_results(conn)
        .await
}

fn lease_end(lease: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::minutes(1))
}
