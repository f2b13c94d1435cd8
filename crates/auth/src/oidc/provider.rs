//! One OpenID Provider as Keel talks to it: its discovery document and keys
//! (fetched and cached; the keys fetched again when a token names an
//! unknown `kid`, at most once per [`KEY_REFETCH_INTERVAL`]), the token
//! endpoint and userinfo. Every request goes through one HTTP client that
//! follows no redirects and has timeouts.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{Jwk, JwkSet},
};
use secrecy::ExposeSecret as _;
use serde::Deserialize;
use tokio::sync::Mutex;
use url::Url;

use super::{
    refusal::Refusal,
    settings::{ProviderSettings, secure_or_loopback},
};

/// The least time between two key fetches an unknown `kid` triggers.
pub const KEY_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// How long a discovery document is trusted before it is fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);

/// The part of a provider's discovery document Keel uses (OpenID Connect
/// Discovery 1.0, section 3; RFC 9207 for the `iss` parameter).
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    /// Must equal the configured issuer exactly.
    pub issuer: String,
    /// Where the browser is sent.
    pub authorization_endpoint: Url,
    /// Where codes are exchanged.
    pub token_endpoint: Url,
    /// Where the user's claims are read, if the provider has one.
    pub userinfo_endpoint: Option<Url>,
    /// The keys.
    pub jwks_uri: Url,
    /// The ID token algorithms the provider uses.
    #[serde(default)]
    pub id_token_signing_alg_values_supported: Vec<String>,
    /// PKCE methods; S256 must be among them when the list is given.
    #[serde(default)]
    pub code_challenge_methods_supported: Option<Vec<String>>,
    /// Whether authorization responses carry `iss` (RFC 9207): then a
    /// response without it is refused.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

impl Metadata {
    /// The asymmetric algorithms the provider advertises that Keel verifies:
    /// never `none`, never an HMAC (a public key is no secret).
    pub fn algorithms(&self) -> Vec<Algorithm> {
        let advertised: &[String] = if self.id_token_signing_alg_values_supported.is_empty() {
            // The spec's default.
            &[]
        } else {
            &self.id_token_signing_alg_values_supported
        };
        let names: Vec<&str> = if advertised.is_empty() {
            vec!["RS256"]
        } else {
            advertised.iter().map(String::as_str).collect()
        };
        names
            .into_iter()
            .filter_map(|name| match name {
                "RS256" => Some(Algorithm::RS256),
                "RS384" => Some(Algorithm::RS384),
                "RS512" => Some(Algorithm::RS512),
                "PS256" => Some(Algorithm::PS256),
                "PS384" => Some(Algorithm::PS384),
                "PS512" => Some(Algorithm::PS512),
                "ES256" => Some(Algorithm::ES256),
                "ES384" => Some(Algorithm::ES384),
                "EdDSA" => Some(Algorithm::EdDSA),
                _ => None,
            })
            .collect()
    }
}

/// What the token endpoint answers (RFC 6749 5.1, OIDC Core 3.1.3.3).
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    /// For userinfo.
    pub access_token: String,
    /// The ID token.
    pub id_token: Option<String>,
}

/// The claims userinfo answers that Keel reads.
#[derive(Debug, Clone, Deserialize)]
pub struct UserInfo {
    /// Must equal the ID token's.
    pub sub: String,
    /// The user's email.
    pub email: Option<String>,
    /// Whether the provider verified it.
    #[serde(default)]
    pub email_verified: Option<bool>,
}

#[derive(Debug, Default)]
struct Cache {
    metadata: Option<(Metadata, Instant)>,
    keys: Option<JwkSet>,
    /// When an unknown `kid` last made the keys be fetched again.
    refetched: Option<Instant>,
}

/// A configured provider.
#[derive(Debug)]
pub struct Provider {
    /// Its settings.
    pub settings: ProviderSettings,
    http: reqwest::Client,
    cache: Mutex<Cache>,
}

impl Provider {
    /// The provider of `settings`, called with `http`.
    pub fn new(settings: ProviderSettings, http: reqwest::Client) -> Self {
        Self {
            settings,
            http,
            cache: Mutex::default(),
        }
    }

    /// Its discovery document, fetched once an hour at most.
    pub async fn metadata(&self) -> Result<Metadata, Refusal> {
        let mut cache = self.cache.lock().await;
        if let Some((metadata, at)) = &cache.metadata
            && at.elapsed() < METADATA_TTL
        {
            return Ok(metadata.clone());
        }
        let metadata = self.fetch_metadata().await.map_err(Refusal::provider_unavailable)?;
        cache.metadata = Some((metadata.clone(), Instant::now()));
        Ok(metadata)
    }

    async fn fetch_metadata(&self) -> anyhow::Result<Metadata> {
        let issuer = self.settings.issuer.as_str().trim_end_matches('/');
        let url = format!("{issuer}/.well-known/openid-configuration");
        let metadata: Metadata = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("fetching {url}"))?
            .json()
            .await
            .with_context(|| format!("reading {url}"))?;
        // OIDC Discovery 4.3: the document's issuer is the configured one,
        // exactly (a document served for another issuer is not this one's).
        anyhow::ensure!(
            metadata.issuer == self.issuer(),
            "{url} names the issuer {:?}, not {:?}",
            metadata.issuer,
            self.issuer()
        );
        for endpoint in [
            &metadata.authorization_endpoint,
            &metadata.token_endpoint,
            &metadata.jwks_uri,
        ]
        .into_iter()
        .chain(metadata.userinfo_endpoint.as_ref())
        {
            anyhow::ensure!(secure_or_loopback(endpoint), "{url}: endpoint {endpoint} is not https");
        }
        if let Some(methods) = &metadata.code_challenge_methods_supported {
            anyhow::ensure!(
                methods.iter().any(|m| m == "S256"),
                "{url}: the provider does not support PKCE S256"
            );
        }
        anyhow::ensure!(
            !metadata.algorithms().is_empty(),
            "{url}: no ID token algorithm Keel verifies"
        );
        Ok(metadata)
    }

    /// The issuer as its tokens name it: the configured URL as written
    /// (`url` adds a `/` to a bare origin; the issuer has none).
    pub fn issuer(&self) -> String {
        let issuer = self.settings.issuer.as_str();
        if self.settings.issuer.path() == "/" {
            issuer.trim_end_matches('/').to_owned()
        } else {
            issuer.to_owned()
        }
    }

    /// The key named `kid`: from the cache, else from a fresh fetch when the
    /// last one is older than [`KEY_REFETCH_INTERVAL`].
    pub async fn key(&self, metadata: &Metadata, kid: Option<&str>) -> Result<DecodingKey, Refusal> {
        let mut cache = self.cache.lock().await;
        if let Some(found) = cache.keys.as_ref().and_then(|keys| pick(keys, kid)) {
            return DecodingKey::from_jwk(&found).map_err(|_| Refusal::id_token("unusable_key"));
        }
        if cache.keys.is_some() {
            // A rotation is picked up at once; a stream of forged kids
            // makes one fetch per interval at most.
            if cache.refetched.is_some_and(|at| at.elapsed() < KEY_REFETCH_INTERVAL) {
                return Err(Refusal::id_token("unknown_key"));
            }
            cache.refetched = Some(Instant::now());
        }
        let keys = self.fetch_keys(metadata).await.map_err(Refusal::provider_unavailable)?;
        let found = pick(&keys, kid);
        cache.keys = Some(keys);
        let found = found.ok_or_else(|| Refusal::id_token("unknown_key"))?;
        DecodingKey::from_jwk(&found).map_err(|_| Refusal::id_token("unusable_key"))
    }

    async fn fetch_keys(&self, metadata: &Metadata) -> anyhow::Result<JwkSet> {
        self.http
            .get(metadata.jwks_uri.clone())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("fetching {}", metadata.jwks_uri))?
            .json()
            .await
            .with_context(|| format!("reading {}", metadata.jwks_uri))
    }

    /// Exchanges `code` (with the PKCE `verifier`) at the token endpoint,
    /// authenticating with client_secret_basic.
    pub async fn exchange(
        &self,
        metadata: &Metadata,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<TokenResponse, Refusal> {
        let response = self
            .http
            .post(metadata.token_endpoint.clone())
            // RFC 6749 2.3.1: the id and secret are form-encoded first.
            .basic_auth(
                form_encode(&self.settings.client_id),
                Some(form_encode(self.settings.client_secret.expose_secret())),
            )
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .map_err(|err| Refusal::provider_unavailable(anyhow::anyhow!("calling the token endpoint: {err}")))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(Refusal::token_endpoint(format!(
                "the token endpoint answered {status}; redirects are not followed"
            )));
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(Refusal::token_endpoint(format!(
                "the token endpoint refused the code ({status}): {}",
                body.chars().take(200).collect::<String>()
            )));
        }
        response
            .json()
            .await
            .map_err(|err| Refusal::token_endpoint(format!("the token response is not JSON: {err}")))
    }

    /// The user's claims from userinfo, if the provider has the endpoint.
    pub async fn userinfo(&self, metadata: &Metadata, access_token: &str) -> Result<Option<UserInfo>, Refusal> {
        let Some(endpoint) = &metadata.userinfo_endpoint else {
            return Ok(None);
        };
        let response = self
            .http
            .get(endpoint.clone())
            .bearer_auth(access_token)
            .send()
            .await
            .map_err(|err| Refusal::provider_unavailable(anyhow::anyhow!("calling userinfo: {err}")))?;
        if !response.status().is_success() {
            return Err(Refusal::token_endpoint(format!(
                "userinfo answered {}",
                response.status()
            )));
        }
        response
            .json()
            .await
            .map(Some)
            .map_err(|err| Refusal::token_endpoint(format!("userinfo is not JSON: {err}")))
    }
}

/// The key a token names; with no `kid`, the only signing key there is.
fn pick(keys: &JwkSet, kid: Option<&str>) -> Option<Jwk> {
    match kid {
        Some(kid) => keys.find(kid).cloned(),
        None => match keys.keys.as_slice() {
            [only] => Some(only.clone()),
            _ => None,
        },
    }
}

fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The HTTP client every provider call uses: no redirects (a token
/// endpoint that redirects is not followed), bounded connect and total time.
pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .user_agent("keel-auth")
        .build()
        .context("building the OpenID Connect HTTP client")
}
