//! The `signing_keys` table: the keys that sign access tokens.

use diesel::{ExpressionMethods as _, QueryDsl as _, SelectableHelper as _};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};

use super::QueryResult;
use crate::{
    keys::{NewKey, StoredKey},
    schema::signing_keys,
};

pub async fn newest_signing_keys(conn: &mut AsyncPgConnection, count: i64) -> QueryResult<Vec<StoredKey>> {
    signing_keys::table
        .select(StoredKey::as_select())
        .order(signing_keys::created_at.desc())
        .limit(count)
        .load(conn)
        .await
}

pub async fn insert_signing_key(conn: &mut AsyncPgConnection, key: &NewKey) -> QueryResult<()> {
    diesel::insert_into(signing_keys::table)
        .values((
            signing_keys::kid.eq(&key.kid),
            signing_keys::private_key.eq(&key.private_key),
            signing_keys::public_key.eq(&key.public_key),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(())
}
