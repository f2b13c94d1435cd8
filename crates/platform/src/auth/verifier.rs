//! Access-token verification, shared by every service.
//!
//! Keys come from auth's JWKS and are cached; a token naming an unknown `kid`
//! triggers one refetch (rate-limited), so a key rotation is picked up at
//! once. A token that verified is remembered until it expires, so repeated
//! calls with the same token cost one hash lookup.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use keel::auth::v1::Jwk;
use sha2::{Digest as _, Sha256};
use tokio::sync::{Mutex, RwLock};

use tokio_util::sync::CancellationToken;

use crate::{
    auth::lifetime::{self, Verified},
    auth::principal::{Claims, Principal},
    auth::revocations::{self, RevocationList, RevocationSource},
    error::Error,
};

/// The boxed future a [`KeySource`] returns.
pub type KeysFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Vec<Jwk>>> + Send + 'a>>;

/// Where the verifier gets the public keys from.
pub trait KeySource: Send + Sync + std::fmt::Debug {
    /// The currently published keys.
    fn fetch(&self) -> KeysFuture<'_>;
}

/// When a token was issued, in Unix ms: auth's token ids are UUIDv7, which
/// carry it to the millisecond (`iat` has whole seconds only, too coarse to
/// tell a token issued just before a revocation from one just after).
fn issued_ms(claims: &Claims) -> i64 {
    uuid::Uuid::parse_str(&claims.jti)
        .ok()
        .filter(|id| id.get_version_num() == 7)
        .and_then(|id| id.get_timestamp())
        .map(|ts| {
            let (seconds, nanos) = ts.to_unix();
            i64::try_from(seconds).unwrap_or(i64::MAX).saturating_mul(1000) + i64::from(nanos / 1_000_000)
        })
        .unwrap_or_else(|| claims.iat.saturating_mul(1000))
}

/// The `typ` header of an access token (RFC 9068, section 2.1).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// Whether a `typ` header names an access token: `at+jwt`, or its media type
/// `application/at+jwt`, in any case (media types are case-insensitive).
fn is_access_token_type(typ: Option<&str>) -> bool {
    typ.is_some_and(|typ| {
        let typ = typ.to_ascii_lowercase();
        typ == ACCESS_TOKEN_TYPE || typ.strip_prefix("application/") == Some(ACCESS_TOKEN_TYPE)
    })
}

/// The longest a verified token is remembered, whatever its expiry.
const MAX_CACHE_TTL: Duration = Duration::from_secs(300);
/// The least time between two refetches triggered by unknown key ids.
const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(1);
/// The longest a key fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// How many verified tokens are remembered.
const CACHE_CAPACITY: usize = 16_384;

/// When the key set was last fetched, and whether that worked.
#[derive(Debug, Clone, Copy)]
struct Fetch {
    at: Instant,
    failed: bool,
}

/// Verifies access tokens against the published keys.
#[derive(Debug)]
pub struct Verifier {
    validation: Validation,
    source: Arc<dyn KeySource>,
    keys: RwLock<HashMap<String, DecodingKey>>,
    last_fetch: Mutex<Option<Fetch>>,
    /// Verified tokens, and until when they may be trusted without checking
    /// their signature again.
    verified: quick_cache::sync::Cache<[u8; 32], (Verified, Instant)>,
    revoked: Arc<RevocationList>,
}

impl Verifier {
    /// A verifier that accepts tokens from `issuer` for `audience`.
    pub fn new(issuer: &str, audience: &str, source: Arc<dyn KeySource>) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Self {
            validation,
            source,
            keys: RwLock::new(HashMap::new()),
            last_fetch: Mutex::new(None),
            verified: quick_cache::sync::Cache::new(CACHE_CAPACITY),
            revoked: Arc::default(),
        }
    }

    /// Follows `source`'s revocations until `shutdown` (see
    /// [`crate::auth::revocations`]).
    pub fn follow_revocations(
        &self,
        source: Arc<dyn RevocationSource>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(revocations::follow(self.revoked.clone(), source, shutdown))
    }

    /// Verifies `token` and returns who it speaks for.
    pub async fn verify(&self, token: &str) -> Result<Principal, Error> {
        self.verify_token(token).await.map(Verified::into_principal)
    }

    /// Verifies `token` and returns it verified: who it speaks for, and what
    /// ends it (for a stream that must end with it).
    pub async fn verify_token(&self, token: &str) -> Result<Verified, Error> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((verified, valid_until)) = self.verified.get(&digest) {
            if Instant::now() < valid_until {
                return verified.unless_revoked();
            }
            self.verified.remove(&digest);
        }

        // The caller learns only INVALID_TOKEN; the log says why.
        let invalid = |cause: &'static str| {
            crate::serve::audit::record_token_refusal(cause);
            Error::unauthenticated("INVALID_TOKEN", "the access token is invalid")
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(invalid("algorithm_not_eddsa"));
        }
        if !is_access_token_type(header.typ.as_deref()) {
            return Err(invalid("not_an_access_token"));
        }
        let kid = header.kid.ok_or_else(|| invalid("no_key_id"))?;
        let key = self.key(&kid).await?.ok_or_else(|| invalid("unknown_key"))?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation).map_err(|err| {
            use jsonwebtoken::errors::ErrorKind;
            match err.kind() {
                ErrorKind::ExpiredSignature => lifetime::expired(),
                ErrorKind::InvalidSignature => invalid("bad_signature"),
                ErrorKind::InvalidIssuer => invalid("wrong_issuer"),
                ErrorKind::InvalidAudience => invalid("wrong_audience"),
                ErrorKind::ImmatureSignature => invalid("not_yet_valid"),
                _ => invalid("bad_claims"),
            }
        })?;
        let principal = Principal::from_claims(&data.claims)?;
        let verified = Verified::new(
            principal,
            issued_ms(&data.claims),
            data.claims.exp,
            self.revoked.clone(),
        );

        let remaining = u64::try_from(data.claims.exp - chrono::Utc::now().timestamp()).unwrap_or(0);
        let ttl = Duration::from_secs(remaining).min(MAX_CACHE_TTL);
        self.verified.insert(digest, (verified.clone(), Instant::now() + ttl));
        verified.unless_revoked()
    }

    /// The key named `kid`, refetching the key set once if it is unknown.
    async fn key(&self, kid: &str) -> Result<Option<DecodingKey>, Error> {
        if let Some(key) = self.keys.read().await.get(kid) {
            return Ok(Some(key.clone()));
        }
        let mut last_fetch = self.last_fetch.lock().await;
        // Another caller may have refetched while this one waited.
        if let Some(key) = self.keys.read().await.get(kid) {
            return Ok(Some(key.clone()));
        }
        let unavailable = || {
            Error::unavailable(
                "KEYS_UNAVAILABLE",
                "the token signing keys are unavailable; retry later",
            )
        };
        match *last_fetch {
            // Failures count too: a down auth must not be asked once per
            // call, and until it is asked again the key is unknown, not bad.
            Some(fetch) if fetch.at.elapsed() < MIN_REFETCH_INTERVAL => {
                return if fetch.failed { Err(unavailable()) } else { Ok(None) };
            }
            _ => {}
        }
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, self.source.fetch())
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {FETCH_TIMEOUT:?}")));
        *last_fetch = Some(Fetch {
            at: Instant::now(),
            failed: fetched.is_err(),
        });
        let jwks = fetched.map_err(|err| {
            tracing::warn!(error = format!("{err:#}"), "fetching the signing keys failed");
            unavailable()
        })?;
        let keys: HashMap<String, DecodingKey> = jwks
            .iter()
            .filter(|jwk| jwk.kty == "OKP" && jwk.crv == "Ed25519" && jwk.alg == "EdDSA")
            .filter_map(|jwk| Some((jwk.kid.clone(), DecodingKey::from_ed_components(&jwk.x).ok()?)))
            .collect();
        let found = keys.get(kid).cloned();
        *self.keys.write().await = keys;
        Ok(found)
    }
}

/// A tower layer that verifies the bearer token of every call that has one
/// and puts the [`Principal`] (and the [`Verified`] token, for streams that
/// must end with it) into the request's extensions. Calls without a
/// token pass through (public RPCs decide for themselves); a token that fails
/// verification ends the call with UNAUTHENTICATED.
#[derive(Debug, Clone)]
pub struct AuthenticateLayer {
    verifier: Arc<Verifier>,
}

impl AuthenticateLayer {
    /// A layer that verifies with `verifier`.
    pub fn new(verifier: Arc<Verifier>) -> Self {
        Self { verifier }
    }
}

impl<S> tower::Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

/// The service [`AuthenticateLayer`] builds.
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    verifier: Arc<Verifier>,
}

impl<S, B> tower::Service<http::Request<B>> for Authenticate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone is not ready; swap so the ready service handles this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        Box::pin(async move {
            match bearer_token(request.headers()) {
                Ok(None) => {}
                Ok(Some(token)) => match verifier.verify_token(&token).await {
                    Ok(verified) => {
                        crate::serve::audit::record_subject(verified.principal());
                        request.extensions_mut().insert(verified.principal().clone());
                        request.extensions_mut().insert(verified);
                    }
                    Err(err) => return Ok(tonic::Status::from(err).into_http()),
                },
                Err(err) => return Ok(tonic::Status::from(err).into_http()),
            }
            inner.call(request).await
        })
    }
}

/// The token of an `authorization: Bearer <token>` header, if any.
pub fn bearer_token(headers: &http::HeaderMap) -> Result<Option<String>, Error> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || Error::unauthenticated("INVALID_TOKEN", "the authorization header must be `Bearer <token>`");
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(malformed());
    }
    Ok(Some(token.trim().to_owned()))
}
