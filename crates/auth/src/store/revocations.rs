//! The `revocations` table: the access tokens of a session or a user that no
//! longer count, for every verifier to follow.

use chrono::{DateTime, Utc};
use diesel::{
    ExpressionMethods as _, Insertable, QueryDsl as _, QueryResult, Queryable, Selectable, SelectableHelper as _,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::schema::revocations;

/// A revocation as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = revocations)]
pub struct RevocationRow {
    pub sequence: i64,
    pub session_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub not_before: DateTime<Utc>,
}

#[derive(Insertable)]
#[diesel(table_name = revocations)]
struct NewRevocation {
    session_id: Option<Uuid>,
    user_id: Option<Uuid>,
}

/// Every token of these sessions, from now on.
pub async fn revoke_sessions(conn: &mut AsyncPgConnection, session_ids: &[Uuid]) -> QueryResult<()> {
    if session_ids.is_empty() {
        return Ok(());
    }
    let rows: Vec<NewRevocation> = session_ids
        .iter()
        .map(|id| NewRevocation {
            session_id: Some(*id),
            user_id: None,
        })
        .collect();
    diesel::insert_into(revocations::table)
        .values(&rows)
        .execute(conn)
        .await?;
    Ok(())
}

/// Every token of a user issued before now (its sessions go on, and new
/// tokens carry what changed).
pub async fn revoke_user(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<()> {
    diesel::insert_into(revocations::table)
        .values(NewRevocation {
            session_id: None,
            user_id: Some(user_id),
        })
        .execute(conn)
        .await?;
    Ok(())
}

/// The revocations whose `not_before` is after `since`, in sequence order.
pub async fn since(conn: &mut AsyncPgConnection, since: DateTime<Utc>) -> QueryResult<Vec<RevocationRow>> {
    revocations::table
        .filter(revocations::not_before.gt(since))
        .order(revocations::sequence)
        .select(RevocationRow::as_select())
        .load(conn)
        .await
}

/// Deletes revocations from before `before` (every token they cover has
/// expired).
pub async fn prune(conn: &mut AsyncPgConnection, before: DateTime<Utc>) -> QueryResult<usize> {
    diesel::delete(revocations::table.filter(revocations::not_before.lt(before)))
        .execute(conn)
        .await
}
