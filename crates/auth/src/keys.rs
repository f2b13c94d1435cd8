//! The Ed25519 keys that sign access tokens, and the tokens themselves.
//!
//! Keys are generated on first start and kept in the database, so every
//! replica signs with the same key and a restart keeps tokens valid. The
//! newest two keys are published; the newest signs once it has been published
//! for a minute (until then the previous one does), so tokens signed just
//! before a rotation still verify and no replica sees a key it cannot check.
//! Rotations should be at least 15 minutes (one access token's life) apart.

use std::sync::Arc;

use anyhow::Context as _;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keel::auth::v1::Jwk;
use keel_platform::auth::principal::{Claims, SERVICE_SUBJECT_PREFIX};
use sha2::{Digest as _, Sha256};
use tokio::sync::RwLock;
use uuid::Uuid;

use keel_platform::sealing::SealingKey;

use crate::{domain::Roles, store::signing_keys};

// The row types are the store's (so the store needs nothing from here);
// generating and using keys is this module's.
pub use crate::store::signing_keys::{NewKey, StoredKey};
use keel_platform::db::SecretBytes;

/// How long an access token lives, at most (and by default): the bound the
/// keys' afterlife and the revocations' relevance are reckoned from.
pub const ACCESS_TOKEN_TTL: Duration = Duration::minutes(15);

/// How long a new key is published before it signs: longer than replicas
/// take to re-read the keys.
pub const PUBLISH_BEFORE_SIGNING: Duration = Duration::seconds(60);

/// How often a replica re-reads the signing keys (to follow a rotation made
/// by another process).
pub const KEY_RELOAD_INTERVAL: Duration = Duration::seconds(30);

/// How long after a newer key is added the previous one's private key is
/// deleted: the newer key signs everywhere after `PUBLISH_BEFORE_SIGNING`
/// plus a reload, and the last token the previous key signed has expired an
/// access token's life after that.
pub const PRIVATE_KEY_AFTERLIFE: Duration = Duration::seconds(
    PUBLISH_BEFORE_SIGNING.num_seconds() + KEY_RELOAD_INTERVAL.num_seconds() + ACCESS_TOKEN_TTL.num_seconds(),
);

impl NewKey {
    /// Generates a fresh Ed25519 key pair, its private key sealed under
    /// `kek` when one is given.
    pub fn generate(kek: Option<&SealingKey>) -> anyhow::Result<Self> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow::anyhow!("generating an Ed25519 key failed"))?;
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| anyhow::anyhow!("reading the new key failed"))?;
        let public_key = pair.public_key().as_ref().to_vec();
        let kid = thumbprint(&public_key);
        let (private_key, sealed_with) = match kek {
            Some(kek) => (
                kek.seal(pkcs8.as_ref(), &sealing_context(&kid))?,
                Some(kek.id().to_owned()),
            ),
            None => (pkcs8.as_ref().to_vec(), None),
        };
        Ok(NewKey {
            kid,
            private_key: private_key.into(),
            public_key,
            sealed_with,
        })
    }
}

/// What a sealed private key is bound to: its own key id, so a sealed key
/// copied onto another row does not open.
fn sealing_context(kid: &str) -> Vec<u8> {
    format!("keel signing key\0{kid}").into_bytes()
}

/// The plain PKCS#8 document of a stored key that can still sign.
pub fn open_private_key(key: &StoredKey, kek: Option<&SealingKey>) -> anyhow::Result<Vec<u8>> {
    let stored = key
        .private_key
        .as_ref()
        .map(SecretBytes::expose)
        .with_context(|| format!("signing key {} has retired: its private key is deleted", key.kid))?;
    match (&key.sealed_with, kek) {
        (None, _) => Ok(stored.to_vec()),
        (Some(id), Some(kek)) if id == kek.id() => kek
            .open(stored, &sealing_context(&key.kid))
            .with_context(|| format!("opening signing key {}", key.kid)),
        (Some(id), Some(kek)) => anyhow::bail!(
            "signing key {} is sealed with key-encryption key {id}, but KEEL_AUTH_KEY_ENCRYPTION_KEY is {}",
            key.kid,
            kek.id()
        ),
        (Some(id), None) => anyhow::bail!(
            "signing key {} is sealed with key-encryption key {id}: set KEEL_AUTH_KEY_ENCRYPTION_KEY",
            key.kid
        ),
    }
}

/// Seals every plain private key under `kek`, or with no `kek` says loudly
/// that they are stored in the clear. Run at start.
pub async fn protect_private_keys(pool: &keel_platform::db::Pool, kek: Option<&SealingKey>) -> anyhow::Result<()> {
    use diesel_async::AsyncConnection as _;
    let mut conn = pool.get().await.context("taking a connection to seal signing keys")?;
    let Some(kek) = kek else {
        let keys = signing_keys::newest(&mut conn, i64::MAX).await?;
        if let Some(sealed) = keys
            .iter()
            .find(|key| key.private_key.is_some() && key.sealed_with.is_some())
        {
            open_private_key(sealed, None)?;
        }
        tracing::warn!(
            "KEEL_AUTH_KEY_ENCRYPTION_KEY is not set: token signing keys are stored unencrypted, \
             so a copy of auth's database can sign tokens for anyone; set it in production"
        );
        return Ok(());
    };
    let sealed = conn
        .transaction::<_, anyhow::Error, _>(async |conn| {
            let mut sealed = 0;
            for key in signing_keys::lock_private_keys(conn).await? {
                // Opening proves the key-encryption key is the right one.
                let plain = open_private_key(&key, Some(kek))?;
                if key.sealed_with.is_none() {
                    let stored = SecretBytes::from(kek.seal(&plain, &sealing_context(&key.kid))?);
                    signing_keys::seal_private_key(conn, &key.kid, &stored, kek.id()).await?;
                    sealed += 1;
                }
            }
            Ok(sealed)
        })
        .await?;
    if sealed > 0 {
        tracing::info!(
            sealed,
            kek = kek.id(),
            "sealed plain signing keys under the key-encryption key"
        );
    }
    Ok(())
}

/// The RFC 7638 JWK thumbprint of an Ed25519 public key.
fn thumbprint(public_key: &[u8]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public_key)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[derive(Debug)]
struct Active {
    kid: String,
    signing: EncodingKey,
    published: Vec<Jwk>,
}

/// The signing key in use and the keys published beside it.
#[derive(Debug, Clone)]
pub struct KeyRing {
    active: Arc<RwLock<Active>>,
    kek: Option<SealingKey>,
    issuer: Arc<str>,
    audience: Arc<str>,
    access_ttl: Duration,
}

impl KeyRing {
    /// Loads the newest keys, generating the first one if there is none;
    /// private keys are sealed under `kek` when one is given.
    pub async fn load(
        pool: &keel_platform::db::Pool,
        issuer: &str,
        audience: &str,
        kek: Option<SealingKey>,
    ) -> anyhow::Result<Self> {
        protect_private_keys(pool, kek.as_ref()).await?;
        let active = Self::read(pool, kek.as_ref()).await?;
        Ok(KeyRing {
            active: Arc::new(RwLock::new(active)),
            kek,
            issuer: issuer.into(),
            audience: audience.into(),
            access_ttl: ACCESS_TOKEN_TTL,
        })
    }

    /// Signs users' access tokens that live `ttl` (at most [`ACCESS_TOKEN_TTL`]).
    pub fn with_access_ttl(mut self, ttl: Duration) -> Self {
        self.access_ttl = ttl.clamp(Duration::seconds(1), ACCESS_TOKEN_TTL);
        self
    }

    /// Re-reads the keys, to pick up a rotation made elsewhere, and deletes
    /// the private keys that no token needs any more.
    pub async fn reload(&self, pool: &keel_platform::db::Pool) -> anyhow::Result<()> {
        let active = Self::read(pool, self.kek.as_ref()).await?;
        *self.active.write().await = active;
        Ok(())
    }

    async fn read(pool: &keel_platform::db::Pool, kek: Option<&SealingKey>) -> anyhow::Result<Active> {
        let mut conn = pool.get().await.context("taking a connection to read signing keys")?;
        let mut keys = signing_keys::newest(&mut conn, 2).await?;
        if keys.is_empty() {
            use diesel_async::AsyncConnection as _;
            let first = NewKey::generate(kek)?;
            keys = conn
                .transaction::<_, anyhow::Error, _>(async |conn| {
                    // Whoever gets the lock second finds the first one's key.
                    signing_keys::lock_first_key(conn).await?;
                    if signing_keys::newest(conn, 1).await?.is_empty() {
                        signing_keys::insert(conn, &first).await?;
                    }
                    Ok(signing_keys::newest(conn, 2).await?)
                })
                .await
                .context("generating the first signing key")?;
        }
        let newest = keys.first().context("no signing key after generating one")?;
        // A new key is published for a while before it signs, so every
        // replica's JWKS (re-read every 30 s) knows it before any token names it.
        let signer = match keys.get(1) {
            Some(previous) if Utc::now() - newest.created_at < PUBLISH_BEFORE_SIGNING => previous,
            _ => newest,
        };
        let signing = EncodingKey::from_ed_der(&open_private_key(signer, kek)?);
        // A private key that signed no live token is only a risk.
        let retired = signing_keys::delete_replaced_private_keys(&mut conn, Utc::now() - PRIVATE_KEY_AFTERLIFE).await?;
        for kid in retired {
            tracing::info!(
                kid,
                "deleted a replaced signing key's private key: every token it signed has expired"
            );
        }
        Ok(Active {
            kid: signer.kid.clone(),
            signing,
            published: keys.iter().map(jwk).collect(),
        })
    }

    /// The published keys, newest first.
    pub async fn jwks(&self) -> Vec<Jwk> {
        self.active.read().await.published.clone()
    }

    /// Signs an access token for a user's session.
    pub async fn user_token(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        roles: &Roles,
    ) -> anyhow::Result<(String, DateTime<Utc>)> {
        self.sign(
            user_id.to_string(),
            roles.names(),
            Some(session_id.to_string()),
            None,
            self.access_ttl,
        )
        .await
    }

    /// Signs an access token for a service with `scopes` (it lives
    /// [`ACCESS_TOKEN_TTL`]: services refresh their own, and are never
    /// revoked).
    pub async fn service_token(&self, client_id: &str, scopes: &[String]) -> anyhow::Result<(String, DateTime<Utc>)> {
        self.sign(
            format!("{SERVICE_SUBJECT_PREFIX}{client_id}"),
            Vec::new(),
            None,
            Some(scopes.join(" ")),
            ACCESS_TOKEN_TTL,
        )
        .await
    }

    async fn sign(
        &self,
        sub: String,
        roles: Vec<String>,
        sid: Option<String>,
        scope: Option<String>,
        ttl: Duration,
    ) -> anyhow::Result<(String, DateTime<Utc>)> {
        let now = Utc::now();
        let expires = now + ttl;
        let claims = Claims {
            iss: self.issuer.to_string(),
            aud: self.audience.to_string(),
            sub,
            exp: expires.timestamp(),
            iat: now.timestamp(),
            jti: Uuid::now_v7().to_string(),
            roles,
            sid,
            scope,
        };
        let active = self.active.read().await;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(active.kid.clone());
        // RFC 9068: an access token says so, and verifiers require it, so no
        // other JWT signed with these keys can stand in for one.
        header.typ = Some(keel_platform::auth::verifier::ACCESS_TOKEN_TYPE.into());
        let token = jsonwebtoken::encode(&header, &claims, &active.signing).context("signing a token")?;
        Ok((token, expires))
    }
}

/// Adds a new signing key to the database at `url`, sealed under `kek` when
/// one is given; returns its id.
pub async fn rotate(url: &str, kek: Option<&SealingKey>) -> anyhow::Result<String> {
    use diesel_async::AsyncConnection as _;
    let mut conn = diesel_async::AsyncPgConnection::establish(url)
        .await
        .context("connecting to auth's database")?;
    let key = NewKey::generate(kek)?;
    signing_keys::insert(&mut conn, &key).await?;
    Ok(key.kid)
}

fn jwk(key: &StoredKey) -> Jwk {
    Jwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x: URL_SAFE_NO_PAD.encode(&key.public_key),
        kid: key.kid.clone(),
        alg: "EdDSA".into(),
        r#use: "sig".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kids_are_thumbprints_of_the_public_key() {
        let key = NewKey::generate(None).expect("key");
        assert_eq!(key.public_key.len(), 32);
        assert_eq!(key.kid, thumbprint(&key.public_key));
        assert_ne!(key.kid, NewKey::generate(None).expect("key").kid);
    }

    #[test]
    fn sealed_private_keys_open_only_with_their_key_encryption_key() {
        let (kek, _) = SealingKey::generate().expect("kek");
        let key = NewKey::generate(Some(&kek)).expect("key");
        assert_eq!(key.sealed_with.as_deref(), Some(kek.id()));
        assert!(
            Ed25519KeyPair::from_pkcs8(key.private_key.expose()).is_err(),
            "stored sealed"
        );
        let stored = StoredKey {
            kid: key.kid.clone(),
            private_key: Some(key.private_key.clone()),
            public_key: key.public_key.clone(),
            created_at: Utc::now(),
            sealed_with: key.sealed_with.clone(),
        };
        let plain = open_private_key(&stored, Some(&kek)).expect("opens");
        assert!(Ed25519KeyPair::from_pkcs8(&plain).is_ok());
        let (other, _) = SealingKey::generate().expect("kek");
        let refused = open_private_key(&stored, Some(&other)).expect_err("another key-encryption key");
        assert!(
            refused.to_string().contains("KEEL_AUTH_KEY_ENCRYPTION_KEY"),
            "{refused}"
        );
        assert!(open_private_key(&stored, None).is_err(), "no key-encryption key");
    }
}
