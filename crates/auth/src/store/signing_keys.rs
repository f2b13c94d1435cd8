//! The `signing_keys` table: the keys that sign access tokens.

use chrono::{DateTime, Utc};
use diesel::{
    AsChangeset, ExpressionMethods as _, Insertable, QueryDsl as _, QueryResult, Queryable, Selectable,
    SelectableHelper as _,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use keel_platform::db::SecretBytes;

use crate::schema::signing_keys;

/// A newly generated key pair, as it is stored (`NewKey::generate` makes
/// one).
#[derive(Debug, Insertable)]
#[diesel(table_name = signing_keys)]
pub struct NewKey {
    /// RFC 7638 thumbprint of the public key.
    pub kid: String,
    /// The PKCS#8 v2 document, sealed when `sealed_with` names a key.
    pub private_key: SecretBytes,
    /// The raw 32-byte public key.
    pub public_key: Vec<u8>,
    /// The fingerprint of the key-encryption key that sealed the private key.
    pub sealed_with: Option<String>,
}

/// A stored key.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = signing_keys)]
pub struct StoredKey {
    /// Its id.
    pub kid: String,
    /// The PKCS#8 document, sealed when `sealed_with` names a key; None once
    /// the key has retired.
    pub private_key: Option<SecretBytes>,
    /// Raw public key.
    pub public_key: Vec<u8>,
    /// When it was generated.
    pub created_at: DateTime<Utc>,
    /// The fingerprint of the key-encryption key that sealed the private key.
    pub sealed_with: Option<String>,
}

/// The `count` newest keys, newest first.
pub async fn newest(conn: &mut AsyncPgConnection, count: i64) -> QueryResult<Vec<StoredKey>> {
    signing_keys::table
        .select(StoredKey::as_select())
        .order(signing_keys::created_at.desc())
        .limit(count)
        .load(conn)
        .await
}

/// Takes the lock that serializes generating the first key, until the
/// caller's transaction ends: replicas starting together on an empty table
/// must not each make one (each would sign with a key the other has not
/// published yet).
pub async fn lock_first_key(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    /// An arbitrary key, this lock's own.
    const FIRST_KEY_LOCK: i64 = 0x6b65_656c_6b65_7931;
    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
        .bind::<diesel::sql_types::BigInt, _>(FIRST_KEY_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn insert(conn: &mut AsyncPgConnection, key: &NewKey) -> QueryResult<()> {
    diesel::insert_into(signing_keys::table)
        .values(key)
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(())
}

/// Every key that still has its private key, locked until the transaction
/// ends (so two replicas starting at once do not both seal a key).
pub async fn lock_private_keys(conn: &mut AsyncPgConnection) -> QueryResult<Vec<StoredKey>> {
    signing_keys::table
        .filter(signing_keys::private_key.is_not_null())
        .select(StoredKey::as_select())
        .for_update()
        .load(conn)
        .await
}

/// A key's private key replaced by its sealed form, and the key that sealed it.
#[derive(AsChangeset)]
#[diesel(table_name = signing_keys)]
struct KeySeal<'a> {
    private_key: &'a SecretBytes,
    sealed_with: &'a str,
}

/// Replaces a key's private key with its sealed form.
pub async fn seal_private_key(
    conn: &mut AsyncPgConnection,
    kid: &str,
    sealed: &SecretBytes,
    sealed_with: &str,
) -> QueryResult<()> {
    diesel::update(signing_keys::table.find(kid))
        .set(KeySeal {
            private_key: sealed,
            sealed_with,
        })
        .execute(conn)
        .await?;
    Ok(())
}

/// A retired key's private key deleted, with the name of what sealed it.
#[derive(AsChangeset)]
// None must write NULL here, not leave the column as it is.
#[diesel(table_name = signing_keys, treat_none_as_null = true)]
struct KeyRetirement {
    private_key: Option<Vec<u8>>,
    sealed_with: Option<String>,
}

/// Deletes the private key of every key that a newer key, created before
/// `successor_before`, has replaced. Returns the ids of the keys it retired.
pub async fn delete_replaced_private_keys(
    conn: &mut AsyncPgConnection,
    successor_before: DateTime<Utc>,
) -> QueryResult<Vec<String>> {
    let successor = diesel::alias!(signing_keys as successor);
    let replaced = diesel::dsl::exists(
        successor
            .filter(successor.field(signing_keys::created_at).gt(signing_keys::created_at))
            .filter(successor.field(signing_keys::created_at).lt(successor_before)),
    );
    diesel::update(
        signing_keys::table
            .filter(signing_keys::private_key.is_not_null())
            .filter(replaced),
    )
    .set(KeyRetirement {
        private_key: None,
        sealed_with: None,
    })
    .returning(signing_keys::kid)
    .get_results(conn)
    .await
}
