//! Refresh tokens (rotation, reuse detection, logout) and access tokens (what
//! the verifier refuses, and key rotation).

// The helpers here are test code too: a broken setup may panic.
#![allow(clippy::expect_used)]

use keel_testkit::status::reason;
use std::sync::Arc;

use anyhow::Context as _;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use diesel_async::RunQueryDsl as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keel::auth::v1::{self as pb, Jwk};
use keel_auth::{
    keys::{self, KeyRing, NewKey},
    store::signing_keys,
};
use keel_platform::{
    auth::principal::{Claims, Principal},
    auth::verifier::{KeySource, KeysFuture, Verifier},
    config::PoolConfig,
};
use keel_testkit::{Suite, authorized};
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

async fn logout(suite: &Suite, refresh_token: &str) -> Result<(), Status> {
    let request = pb::LogoutRequest {
        refresh_token: refresh_token.into(),
    };
    suite.auth().logout(request).await.map(drop)
}

async fn list_sessions(suite: &Suite, access_token: &str) -> Result<pb::ListSessionsResponse, Status> {
    let request = authorized(pb::ListSessionsRequest::default(), access_token);
    Ok(suite.auth().list_sessions(request).await?.into_inner())
}

/// A well-formed refresh token that was never issued.
fn random_refresh_token() -> String {
    let token = keel_auth::domain::OpaqueToken::generate().expect("the system random source works");
    token.expose().to_owned()
}

/// Claims that auth itself would put in a token for this session.
fn claims_like_auth(suite: &Suite, user_id: &str, session_id: &str) -> Claims {
    let now = chrono::Utc::now().timestamp();
    Claims {
        iss: suite.auth_config().service.tokens.token_issuer.clone(),
        aud: suite.auth_config().service.tokens.token_audience.clone(),
        sub: user_id.into(),
        exp: now + 600,
        iat: now,
        jti: uuid::Uuid::now_v7().to_string(),
        roles: vec!["user".into()],
        sid: Some(session_id.into()),
        scope: None,
    }
}

/// The newest signing key in the suite's database: its kid and private key.
async fn real_signing_key(suite: &Suite) -> anyhow::Result<(String, EncodingKey)> {
    let newest = signing_keys::newest(&mut suite.auth_db().await?, 1).await?;
    let key = newest.into_iter().next().context("a signing key")?;
    let private_key = keys::open_private_key(&key, suite.auth_config().key_encryption_key.as_ref())?;
    Ok((key.kid.clone(), EncodingKey::from_ed_der(&private_key)))
}

fn sign(alg: Algorithm, kid: &str, claims: &Claims, key: &EncodingKey) -> anyhow::Result<String> {
    sign_typed(alg, kid, Some("at+jwt"), claims, key)
}

fn sign_typed(
    alg: Algorithm,
    kid: &str,
    typ: Option<&str>,
    claims: &Claims,
    key: &EncodingKey,
) -> anyhow::Result<String> {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    header.typ = typ.map(str::to_owned);
    Ok(jsonwebtoken::encode(&header, claims, key)?)
}

/// The session's access token is refused as revoked within 2 s (see
/// tests/revocation.rs); until then it lists no sessions.
async fn assert_soon_revoked(suite: &Suite, access_token: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match list_sessions(suite, access_token).await {
            Err(status) if status.code() == Code::Unauthenticated => {
                assert_eq!(reason(&status), "TOKEN_REVOKED");
                return Ok(());
            }
            Err(status) => anyhow::bail!("unexpected {status:?}"),
            Ok(listed) => {
                assert!(listed.sessions.is_empty(), "the ended session is listed");
                anyhow::ensure!(tokio::time::Instant::now() < deadline, "not revoked within 2 s");
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
        }
    }
}

async fn assert_refused(suite: &Suite, forged: &str) {
    let status = list_sessions(suite, forged)
        .await
        .expect_err("a forged token is refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

/// Keys handed to a verifier directly, as if fetched from GetJwks.
#[derive(Debug)]
struct StaticKeys(Vec<Jwk>);

impl KeySource for StaticKeys {
    fn fetch(&self) -> KeysFuture<'_> {
        let keys = self.0.clone();
        Box::pin(async move { Ok(keys) })
    }
}

// Refresh tokens.

#[tokio::test(flavor = "multi_thread")]
async fn refresh_rotates_the_refresh_token() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, first) = suite.signed_in_user().await?;
    let second = suite.refresh(&first.refresh_token).await?;

    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    assert_eq!(second.session_id, first.session_id);
    assert_eq!(second.token_type, "Bearer");
    let sessions = list_sessions(&suite, &second.access_token).await?.sessions;
    assert_eq!(sessions.len(), 1);
    // The new refresh token is good for one more turn.
    suite.refresh(&second.refresh_token).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn reusing_a_spent_refresh_token_revokes_the_whole_family() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, first) = suite.signed_in_user().await?;
    let second = suite.refresh(&first.refresh_token).await?;

    let status = suite.refresh(&first.refresh_token).await.expect_err("spent");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "REFRESH_TOKEN_REUSED");

    // The thief may hold the newest token; it dies with the family, and so
    // does its access token.
    let status = suite.refresh(&second.refresh_token).await.expect_err("family revoked");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_soon_revoked(&suite, &second.access_token).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_refreshes_with_one_token_succeed_at_most_once() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, tokens) = suite.signed_in_user().await?;
    let calls = (0..8).map(|_| {
        let mut auth = suite.auth();
        let refresh_token = tokens.refresh_token.clone();
        tokio::spawn(async move { auth.refresh(pb::RefreshRequest { refresh_token }).await })
    });
    let outcomes = futures::future::join_all(calls)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;

    let successes = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert!(successes <= 1, "{successes} refreshes succeeded with one token");
    for status in outcomes.iter().filter_map(|outcome| outcome.as_ref().err()) {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_ends_the_session() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, tokens) = suite.signed_in_user().await?;
    logout(&suite, &tokens.refresh_token).await?;

    let status = suite.refresh(&tokens.refresh_token).await.expect_err("logged out");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_soon_revoked(&suite, &tokens.access_token).await?;
    // A retry is harmless.
    logout(&suite, &tokens.refresh_token).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_with_an_older_token_of_the_session_ends_it_too() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, first) = suite.signed_in_user().await?;
    let second = suite.refresh(&first.refresh_token).await?;
    logout(&suite, &first.refresh_token).await?;
    let status = suite.refresh(&second.refresh_token).await.expect_err("logged out");
    assert_eq!(status.code(), Code::Unauthenticated);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_of_an_unknown_token_succeeds() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    logout(&suite, &random_refresh_token()).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_refresh_token_is_unauthenticated() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let status = suite.refresh(&random_refresh_token()).await.expect_err("never issued");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "INVALID_REFRESH_TOKEN");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_refresh_token_is_invalid_argument() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    for malformed in ["", "not-a-token", "c2hvcnQ", "!!!!"] {
        let status = suite.refresh(malformed).await.expect_err("malformed");
        assert_eq!(status.code(), Code::InvalidArgument, "{malformed:?}");
        let fields: Vec<_> = status
            .get_details_bad_request()
            .expect("field violations")
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, vec!["refresh_token"]);

        let status = logout(&suite, malformed).await.expect_err("malformed");
        assert_eq!(status.code(), Code::InvalidArgument, "{malformed:?}");
    }
    suite.stop().await
}

// Access tokens: what the verifier refuses.

#[tokio::test(flavor = "multi_thread")]
async fn token_signed_with_the_real_key_and_right_claims_is_accepted() -> anyhow::Result<()> {
    // The control for the forgeries below: they fail for the one thing each
    // changes, not for something this helper gets wrong.
    let suite = keel_testkit::spawn_suite().await?;
    let (user, tokens) = suite.signed_in_user().await?;
    let (kid, key) = real_signing_key(&suite).await?;
    let token = sign(
        Algorithm::EdDSA,
        &kid,
        &claims_like_auth(&suite, &user.id, &tokens.session_id),
        &key,
    )?;
    let sessions = list_sessions(&suite, &token).await?.sessions;
    assert_eq!(sessions.len(), 1);
    assert!(sessions[0].current);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwt_that_is_not_typed_as_an_access_token_is_refused() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (user, tokens) = suite.signed_in_user().await?;
    let header = jsonwebtoken::decode_header(&tokens.access_token)?;
    assert_eq!(header.typ.as_deref(), Some("at+jwt"), "auth types its access tokens");
    let claims = claims_like_auth(&suite, &user.id, &tokens.session_id);
    let (kid, key) = real_signing_key(&suite).await?;
    // The real key and the right claims, but typed as some other JWT (or not
    // at all): refused.
    for typ in [None, Some("JWT"), Some("id_token+jwt")] {
        assert_refused(&suite, &sign_typed(Algorithm::EdDSA, &kid, typ, &claims, &key)?).await;
    }
    // The media-type spelling is an access token too.
    let long = sign_typed(Algorithm::EdDSA, &kid, Some("application/at+jwt"), &claims, &key)?;
    list_sessions(&suite, &long).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_without_a_token_or_with_a_malformed_header_are_refused() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let status = suite
        .auth()
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);

    let mut request = tonic::Request::new(pb::ListSessionsRequest::default());
    request
        .metadata_mut()
        .insert("authorization", "Basic dXNlcjpwYXNz".parse()?);
    let status = suite
        .auth()
        .list_sessions(request)
        .await
        .expect_err("not a bearer token");
    assert_eq!(status.code(), Code::Unauthenticated);

    assert_refused(&suite, "not.a.jwt").await;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn alg_none_token_is_refused() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (user, tokens) = suite.signed_in_user().await?;
    let (kid, _) = real_signing_key(&suite).await?;
    let header = serde_json::json!({ "alg": "none", "typ": "JWT", "kid": kid });
    let claims = claims_like_auth(&suite, &user.id, &tokens.session_id);
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?)
    );
    assert_refused(&suite, &unsigned).await;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn hs256_token_is_refused() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (user, tokens) = suite.signed_in_user().await?;
    let (kid, _) = real_signing_key(&suite).await?;
    let claims = claims_like_auth(&suite, &user.id, &tokens.session_id);

    let with_a_secret = sign(
        Algorithm::HS256,
        &kid,
        &claims,
        &EncodingKey::from_secret(b"some shared secret"),
    )?;
    assert_refused(&suite, &with_a_secret).await;

    // The classic confusion: the public key used as an HMAC secret.
    let jwks = suite.auth().get_jwks(pb::GetJwksRequest {}).await?.into_inner();
    let public = URL_SAFE_NO_PAD.decode(&jwks.keys[0].x)?;
    let with_the_public_key = sign(Algorithm::HS256, &kid, &claims, &EncodingKey::from_secret(&public))?;
    assert_refused(&suite, &with_the_public_key).await;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn token_from_another_issuer_is_refused() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (user, tokens) = suite.signed_in_user().await?;
    let (kid, key) = real_signing_key(&suite).await?;
    let mut claims = claims_like_auth(&suite, &user.id, &tokens.session_id);
    claims.iss = "someone-else".into();
    assert_refused(&suite, &sign(Algorithm::EdDSA, &kid, &claims, &key)?).await;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn token_for_another_audience_is_refused() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (user, tokens) = suite.signed_in_user().await?;
    let (kid, key) = real_signing_key(&suite).await?;
    let mut claims = claims_like_auth(&suite, &user.id, &tokens.session_id);
    claims.aud = "another-suite".into();
    assert_refused(&suite, &sign(Algorithm::EdDSA, &kid, &claims, &key)?).await;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_token_is_refused() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (user, tokens) = suite.signed_in_user().await?;
    let (kid, key) = real_signing_key(&suite).await?;
    let mut claims = claims_like_auth(&suite, &user.id, &tokens.session_id);
    claims.iat -= 3600;
    claims.exp = chrono::Utc::now().timestamp() - 60;
    let status = list_sessions(&suite, &sign(Algorithm::EdDSA, &kid, &claims, &key)?)
        .await
        .expect_err("expired");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "TOKEN_EXPIRED");
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_token_is_refused() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, tokens) = suite.signed_in_user().await?;
    let [header, payload, signature]: [&str; 3] = tokens
        .access_token
        .split('.')
        .collect::<Vec<_>>()
        .try_into()
        .map_err(|parts| anyhow::anyhow!("a JWT has three parts: {parts:?}"))?;

    // A flipped character in the signature (not the last one, whose low bits
    // are padding).
    let mut bad_signature = signature.to_owned().into_bytes();
    bad_signature[10] = if bad_signature[10] == b'A' { b'B' } else { b'A' };
    let bad_signature = String::from_utf8(bad_signature)?;
    assert_refused(&suite, &format!("{header}.{payload}.{bad_signature}")).await;

    // Claims edited to grant admin, under the original signature.
    let mut claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload)?)?;
    claims.roles = vec!["user".into(), "admin".into()];
    let escalated = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?);
    assert_refused(&suite, &format!("{header}.{escalated}.{signature}")).await;

    // The genuine token still works.
    list_sessions(&suite, &tokens.access_token).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn token_signed_with_a_foreign_key_is_refused() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (user, tokens) = suite.signed_in_user().await?;
    let (real_kid, _) = real_signing_key(&suite).await?;
    let foreign = NewKey::generate(None)?;
    let foreign_key = EncodingKey::from_ed_der(foreign.private_key.expose());
    let claims = claims_like_auth(&suite, &user.id, &tokens.session_id);

    // An unknown kid.
    assert_refused(&suite, &sign(Algorithm::EdDSA, &foreign.kid, &claims, &foreign_key)?).await;
    // The real kid over a signature by another key.
    assert_refused(&suite, &sign(Algorithm::EdDSA, &real_kid, &claims, &foreign_key)?).await;
    // No kid at all.
    let no_kid = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &foreign_key)?;
    assert_refused(&suite, &no_kid).await;
    suite.stop().await
}

// Key rotation.

#[tokio::test(flavor = "multi_thread")]
async fn after_a_rotation_the_new_key_is_published_then_signs_and_the_previous_still_verifies() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (user, before) = suite.signed_in_user().await?;
    let (old_kid, _) = real_signing_key(&suite).await?;
    let issuer = suite.auth_config().service.tokens.token_issuer.clone();
    let audience = suite.auth_config().service.tokens.token_audience.clone();

    let pool = keel_platform::db::pool(suite.auth_database_url(), &PoolConfig::default())?;
    let new_key = NewKey::generate(suite.auth_config().key_encryption_key.as_ref())?;
    let mut conn = pool.get().await?;
    signing_keys::insert(&mut conn, &new_key).await?;
    let ring = KeyRing::load(
        &pool,
        &issuer,
        &audience,
        suite.auth_config().key_encryption_key.clone(),
    )
    .await?;

    let jwks = ring.jwks().await;
    let kids: Vec<&str> = jwks.iter().map(|key| key.kid.as_str()).collect();
    assert_eq!(
        kids,
        vec![new_key.kid.as_str(), old_kid.as_str()],
        "current first, then previous"
    );

    let verifier = Verifier::new(&issuer, &audience, Arc::new(StaticKeys(jwks)));
    // Signed before the rotation.
    let Principal::User(principal) = verifier.verify(&before.access_token).await? else {
        anyhow::bail!("a user token");
    };
    assert_eq!(principal.user_id.to_string(), user.id);
    let roles = keel_auth::domain::Roles::from_names(&["user".into()]);

    // Freshly published, the new key does not sign yet: replicas that have
    // not re-read the keys must still verify what is issued.
    let (meanwhile, _) = ring.user_token(principal.user_id, principal.session_id, &roles).await?;
    assert_eq!(
        jsonwebtoken::decode_header(&meanwhile)?.kid.as_deref(),
        Some(old_kid.as_str())
    );

    // Once it has been published long enough, it signs.
    diesel::sql_query(
        "UPDATE signing_keys SET created_at = CASE WHEN kid = $1 \
             THEN now() - interval '2 minutes' ELSE now() - interval '10 minutes' END",
    )
    .bind::<diesel::sql_types::Text, _>(&new_key.kid)
    .execute(&mut conn)
    .await?;
    ring.reload(&pool).await?;
    let (after, _) = ring
        .user_token(
            principal.user_id,
            principal.session_id,
            &keel_auth::domain::Roles::from_names(&["user".into()]),
        )
        .await?;
    assert_eq!(
        jsonwebtoken::decode_header(&after)?.kid.as_deref(),
        Some(new_key.kid.as_str())
    );
    verifier.verify(&after).await?;
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_two_rotations_old_is_no_longer_published() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let (_, before) = suite.signed_in_user().await?;
    let issuer = suite.auth_config().service.tokens.token_issuer.clone();
    let audience = suite.auth_config().service.tokens.token_audience.clone();

    let pool = keel_platform::db::pool(suite.auth_database_url(), &PoolConfig::default())?;
    let mut conn = pool.get().await?;
    for _ in 0..2 {
        signing_keys::insert(
            &mut conn,
            &NewKey::generate(suite.auth_config().key_encryption_key.as_ref())?,
        )
        .await?;
    }
    let ring = KeyRing::load(
        &pool,
        &issuer,
        &audience,
        suite.auth_config().key_encryption_key.clone(),
    )
    .await?;
    let jwks = ring.jwks().await;
    assert_eq!(jwks.len(), 2);

    let verifier = Verifier::new(&issuer, &audience, Arc::new(StaticKeys(jwks)));
    let status = tonic::Status::from(verifier.verify(&before.access_token).await.expect_err("retired key"));
    assert_eq!(status.code(), Code::Unauthenticated);
    suite.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_publishes_the_stored_signing_key() -> anyhow::Result<()> {
    let suite = keel_testkit::spawn_suite().await?;
    let pool = keel_platform::db::pool(suite.auth_database_url(), &PoolConfig::default())?;
    let mut conn = pool.get().await?;
    let keys = signing_keys::newest(&mut conn, 10).await?;
    assert_eq!(keys.len(), 1, "one key is generated on first start");
    let jwks = suite.auth().get_jwks(pb::GetJwksRequest {}).await?.into_inner().keys;
    assert_eq!(jwks.len(), 1);
    assert_eq!(jwks[0].kid, keys[0].kid);
    assert_eq!(URL_SAFE_NO_PAD.decode(&jwks[0].x)?, keys[0].public_key);
    assert_eq!((jwks[0].r#use.as_str(), jwks[0].alg.as_str()), ("sig", "EdDSA"));
    suite.stop().await
}
