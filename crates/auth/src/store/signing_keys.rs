//! The `signing_keys` table: the keys that sign access tokens.

use chrono::{DateTime, Utc};
use diesel::{ExpressionMethods as _, QueryDsl as _, Queryable, Selectable, SelectableHelper as _};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};

use super::QueryResult;
use crate::schema::signing_keys;

/// A newly generated key pair, to store (`NewKey::generate` makes one). Its
/// `Debug` leaves the private key out.
pub struct NewKey {
    /// RFC 7638 thumbprint of the public key.
    pub kid: String,
    /// PKCS#8 v2 document.
    pub private_key: Vec<u8>,
    /// The raw 32-byte public key.
    pub public_key: Vec<u8>,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// A stored key. Its `Debug` leaves the private key out.
#[derive(Clone, Queryable, Selectable)]
#[diesel(table_name = signing_keys)]
pub struct StoredKey {
    /// Its id.
    pub kid: String,
    /// PKCS#8 document.
    pub private_key: Vec<u8>,
    /// Raw public key.
    pub public_key: Vec<u8>,
    /// When it was generated.
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

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
