//! The key that signs unsubscribe links, made once and shared by replicas.

use diesel::{Insertable, QueryDsl as _, QueryResult};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};

use crate::schema::link_keys;

/// The one row: its id is always 1.
#[derive(Insertable)]
#[diesel(table_name = link_keys)]
struct NewLinkKey<'a> {
    id: i32,
    key: &'a [u8],
}

/// The stored key, first storing `candidate` if there is none (two
/// replicas starting together agree on whichever landed first).
pub async fn get_or_create(conn: &mut AsyncPgConnection, candidate: &[u8; 32]) -> QueryResult<Vec<u8>> {
    diesel::insert_into(link_keys::table)
        .values(NewLinkKey {
            id: 1,
            key: candidate.as_slice(),
        })
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    link_keys::table.find(1).select(link_keys::key).first(conn).await
}
