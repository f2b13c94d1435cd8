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
use keel_platform::principal::{Claims, SERVICE_SUBJECT_PREFIX};
use sha2::{Digest as _, Sha256};
use tokio::sync::RwLock;
use uuid::Uuid;

use crate::{domain::Roles, store};

// The row types are the store's (so the store needs nothing from here);
// generating and using keys is this module's.
pub use crate::store::{NewKey, StoredKey};

/// How long an access token lives.
pub const ACCESS_TOKEN_TTL: Duration = Duration::minutes(15);

/// How long a new key is published before it signs: longer than replicas
/// take to re-read the keys.
pub const PUBLISH_BEFORE_SIGNING: Duration = Duration::seconds(60);

impl NewKey {
    /// Generates a fresh Ed25519 key pair.
    pub fn generate() -> anyhow::Result<Self> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow::anyhow!("generating an Ed25519 key failed"))?;
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| anyhow::anyhow!("reading the new key failed"))?;
        let public_key = pair.public_key().as_ref().to_vec();
        Ok(NewKey {
            kid: thumbprint(&public_key),
            private_key: pkcs8.as_ref().to_vec(),
            public_key,
        })
    }
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
    issuer: Arc<str>,
    audience: Arc<str>,
}

impl KeyRing {
    /// Loads the newest keys, generating the first one if there is none.
    pub async fn load(pool: &keel_platform::db::Pool, issuer: &str, audience: &str) -> anyhow::Result<Self> {
        let active = Self::read(pool).await?;
        Ok(KeyRing {
            active: Arc::new(RwLock::new(active)),
            issuer: issuer.into(),
            audience: audience.into(),
        })
    }

    /// Re-reads the keys, to pick up a rotation made elsewhere.
    pub async fn reload(&self, pool: &keel_platform::db::Pool) -> anyhow::Result<()> {
        let active = Self::read(pool).await?;
        *self.active.write().await = active;
        Ok(())
    }

    async fn read(pool: &keel_platform::db::Pool) -> anyhow::Result<Active> {
        let mut conn = pool.get().await.context("taking a connection to read signing keys")?;
        let mut keys = store::newest_signing_keys(&mut conn, 2).await?;
        if keys.is_empty() {
            store::insert_signing_key(&mut conn, &NewKey::generate()?).await?;
            keys = store::newest_signing_keys(&mut conn, 2).await?;
        }
        let newest = keys.first().context("no signing key after generating one")?;
        // A new key is published for a while before it signs, so every
        // replica's JWKS (re-read every 30 s) knows it before any token names it.
        let signer = match keys.get(1) {
            Some(previous) if Utc::now() - newest.created_at < PUBLISH_BEFORE_SIGNING => previous,
            _ => newest,
        };
        Ok(Active {
            kid: signer.kid.clone(),
            signing: EncodingKey::from_ed_der(&signer.private_key),
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
        self.sign(user_id.to_string(), roles.names(), Some(session_id.to_string()), None)
            .await
    }

    /// Signs an access token for a service with `scopes`.
    pub async fn service_token(&self, client_id: &str, scopes: &[String]) -> anyhow::Result<(String, DateTime<Utc>)> {
        self.sign(
            format!("{SERVICE_SUBJECT_PREFIX}{client_id}"),
            Vec::new(),
            None,
            Some(scopes.join(" ")),
        )
        .await
    }

    async fn sign(
        &self,
        sub: String,
        roles: Vec<String>,
        sid: Option<String>,
        scope: Option<String>,
    ) -> anyhow::Result<(String, DateTime<Utc>)> {
        let now = Utc::now();
        let expires = now + ACCESS_TOKEN_TTL;
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
        header.typ = Some(keel_platform::verifier::ACCESS_TOKEN_TYPE.into());
        let token = jsonwebtoken::encode(&header, &claims, &active.signing).context("signing a token")?;
        Ok((token, expires))
    }
}

/// Adds a new signing key to the database at `url`; returns its id.
pub async fn rotate(url: &str) -> anyhow::Result<String> {
    use diesel_async::AsyncConnection as _;
    let mut conn = diesel_async::AsyncPgConnection::establish(url)
        .await
        .context("connecting to auth's database")?;
    let key = NewKey::generate()?;
    store::insert_signing_key(&mut conn, &key).await?;
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
        let key = NewKey::generate().expect("key");
        assert_eq!(key.public_key.len(), 32);
        assert_eq!(key.kid, thumbprint(&key.public_key));
        assert_ne!(key.kid, NewKey::generate().expect("key").kid);
    }
}
