//! ID token validation, as OpenID Connect Core 1.0 section 3.1.3.7 asks: the
//! signature with one of the provider's advertised asymmetric algorithms
//! and a key from its JWKS, `iss` exactly, `aud` containing Keel's client
//! id (and `azp` equal to it when there are several audiences, or when it
//! is present), `exp`, `iat` within a skew, and the `nonce` this sign-in
//! sent.

use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use subtle::ConstantTimeEq as _;

use super::{
    provider::{Metadata, Provider},
    refusal::Refusal,
};

/// How far the provider's clock may be from Keel's.
pub const CLOCK_SKEW_SECS: i64 = 120;
/// How old an ID token may be when it arrives.
const MAX_AGE_SECS: i64 = 600;

/// The verified claims Keel uses.
#[derive(Debug, Clone)]
pub struct IdClaims {
    /// The issuer's stable id for the user.
    pub subject: String,
    /// The user's email, if the provider shares it.
    pub email: Option<String>,
    /// Whether the provider verified that email.
    pub email_verified: bool,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    iat: i64,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    aud: serde_json::Value,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
}

/// How many audiences an `aud` claim names (a string or an array).
fn audiences(aud: &serde_json::Value) -> usize {
    match aud {
        serde_json::Value::String(_) => 1,
        serde_json::Value::Array(all) => all.len(),
        _ => 0,
    }
}

/// Verifies `token` from `provider` for a sign-in that sent `nonce`.
pub async fn verify(provider: &Provider, metadata: &Metadata, token: &str, nonce: &str) -> Result<IdClaims, Refusal> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|_| Refusal::id_token("malformed or unsupported algorithm"))?;
    let algorithms = metadata.algorithms();
    if !algorithms.contains(&header.alg) || is_hmac(header.alg) {
        return Err(Refusal::id_token(format!(
            "algorithm {:?} is not one the provider advertises",
            header.alg
        )));
    }
    let key = provider.key(metadata, header.kid.as_deref()).await?;
    let mut validation = Validation::new(header.alg);
    validation.algorithms = algorithms;
    validation.set_issuer(&[provider.issuer()]);
    validation.set_audience(&[provider.settings.client_id.as_str()]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    validation.leeway = u64::try_from(CLOCK_SKEW_SECS).unwrap_or(0);
    let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|err| {
        use jsonwebtoken::errors::ErrorKind;
        Refusal::id_token(match err.kind() {
            ErrorKind::InvalidSignature => "bad signature".to_owned(),
            ErrorKind::ExpiredSignature => "expired".to_owned(),
            ErrorKind::InvalidIssuer => "wrong issuer".to_owned(),
            ErrorKind::InvalidAudience => "wrong audience".to_owned(),
            ErrorKind::InvalidAlgorithm => "algorithm does not match the key".to_owned(),
            other => format!("invalid: {other:?}"),
        })
    })?;
    let claims = data.claims;
    let client_id = provider.settings.client_id.as_str();
    match (&claims.azp, audiences(&claims.aud)) {
        (Some(azp), _) if azp != client_id => return Err(Refusal::id_token("azp is another client")),
        (None, n) if n > 1 => return Err(Refusal::id_token("several audiences and no azp")),
        _ => {}
    }
    let now = chrono::Utc::now().timestamp();
    if claims.iat > now + CLOCK_SKEW_SECS {
        return Err(Refusal::id_token("issued in the future"));
    }
    if claims.iat < now - MAX_AGE_SECS - CLOCK_SKEW_SECS {
        return Err(Refusal::id_token("issued too long ago"));
    }
    let sent = claims.nonce.as_deref().ok_or_else(|| Refusal::id_token("no nonce"))?;
    if !bool::from(sent.as_bytes().ct_eq(nonce.as_bytes())) {
        return Err(Refusal::id_token("nonce is not this sign-in's"));
    }
    Ok(IdClaims {
        subject: claims.sub,
        email: claims.email,
        email_verified: verified(claims.email_verified.as_ref()),
    })
}

/// `email_verified` as a boolean (some providers send the string "true").
pub fn verified(value: Option<&serde_json::Value>) -> bool {
    match value {
        Some(serde_json::Value::Bool(verified)) => *verified,
        Some(serde_json::Value::String(text)) => text == "true",
        _ => false,
    }
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}
