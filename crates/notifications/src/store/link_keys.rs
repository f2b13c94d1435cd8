//! The key that signs unsubscribe links, made once and shared by replicas.

use diesel::{ExpressionMethods as _, QueryDsl as _};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};

use super::QueryResult;
use crate::schema::link_keys;

/// The stored key, first storing `candidate` if there is none (two
/// replicas starting together agree on whichever landed first).
pub async fn get_or_create(conn: &mut AsyncPgConnection, candidate: &[u8; 32]) -> QueryResult<Vec<u8>> {
    diesel::insert_into(link_keys::table)
        .values((link_keys::id.eq(1), link_keys::key.eq(candidate.as_slice())))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    link_keys::table.find(1).select(link_keys::key).first(conn).await
}
