//! A stand-in for an OpenID Provider (the "Sign in with …" side of OpenID
//! Connect), over real HTTP on port 0: discovery, a JWKS of EC P-256 keys,
//! the authorization endpoint of the code flow with PKCE (S256 only), the
//! token endpoint (client secret by HTTP Basic or in the form), and userinfo.
//! Its issuer is `http://127.0.0.1:<port>`, with no trailing slash.
//!
//! There is no browser and no login page: a GET of an authorization URL
//! signs in the account set with [`OidcProvider::sign_in_as`], consents at
//! once and answers `302` to the redirect URI with `code`, `state` and `iss`
//! (RFC 9207). [`OidcProvider::authorize`] does that GET and parses the
//! redirect into a [`Callback`] for the relying party's callback handler. A
//! request the provider cannot trust to redirect (unknown client, redirect
//! URI not registered with [`OidcProvider::allow_redirect_uri`]) gets a `400`
//! page and no redirect, as OAuth 2.0 requires.
//!
//! Attacks are scripted with [`OidcProvider::misbehave`]: each
//! [`Misbehaviour`] makes every later answer of the endpoint it concerns
//! (until [`OidcProvider::behave`]) something a careful relying party must
//! refuse: an ID token for another audience, expired, unsigned (`alg: none`),
//! signed with HMAC keyed by the public key, with the wrong nonce or issuer;
//! a callback without `iss` or with another one; userinfo about someone
//! else; a token endpoint that redirects or is slow. Misbehaviours combine;
//! of two that decide the same thing (how the ID token is signed, say) the
//! one scripted last wins. Counters tell how often discovery, the JWKS and
//! the token endpoint were asked, so tests can check caching and that a
//! redirect was not followed.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::Context as _;
use aws_lc_rs::{
    encoding::AsDer as _,
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _},
};
use axum::{
    Router,
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

/// The client id [`OidcProvider::start`] registers.
pub const CLIENT_ID: &str = "keel-test-client";

/// The client secret [`OidcProvider::start`] registers.
pub const CLIENT_SECRET: &str = "keel-test-client-secret";

/// The other client that misbehaving ID tokens are (also) meant for.
pub const OTHER_CLIENT_ID: &str = "other-client";

/// The issuer a misbehaving provider claims to be, in the ID token or in the
/// callback's `iss`.
pub const OTHER_ISSUER: &str = "https://impostor.example";

/// How long tokens live, in seconds.
pub const TOKEN_LIFETIME_SECS: i64 = 300;

/// The user the provider signs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// `sub`: the provider's stable identifier of the user.
    pub subject: String,
    /// `email`.
    pub email: String,
    /// `email_verified`: whether the provider vouches for the address.
    pub email_verified: bool,
    /// `name`.
    pub name: String,
}

impl Default for Account {
    /// Jane Doe, with a verified address.
    fn default() -> Self {
        Self {
            subject: "248289761001".into(),
            email: "jane.doe@example.com".into(),
            email_verified: true,
            name: "Jane Doe".into(),
        }
    }
}

/// Something the provider does wrong, on purpose; each is an attack (or a
/// fault) the relying party must refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// The ID token's `aud` is [`OTHER_CLIENT_ID`] only.
    WrongAudience,
    /// `aud` is `[client, OTHER_CLIENT_ID]` and `azp` is [`OTHER_CLIENT_ID`].
    AzpMismatch,
    /// `aud` is `[client, OTHER_CLIENT_ID]`, with no `azp`.
    MultipleAudiencesWithoutAzp,
    /// `exp` ten minutes in the past, `iat` fifteen.
    Expired,
    /// `iat` ten minutes in the future (and `exp` after it).
    IssuedInTheFuture,
    /// Header `{"alg":"none"}` and an empty signature.
    AlgNone,
    /// HS256 with the PEM of the signing key's public key (its
    /// SubjectPublicKeyInfo) as the HMAC secret, and that key's `kid`: the
    /// key-confusion attack on verifiers that take the algorithm from the
    /// token.
    HmacWithPublicKey,
    /// ES256 by a key that is not in the JWKS, under a `kid` that is not
    /// either.
    UnknownKid,
    /// A `nonce` other than the authorization request's.
    WrongNonce,
    /// No `nonce`, although the authorization request had one.
    MissingNonce,
    /// The ID token's `iss` is [`OTHER_ISSUER`].
    WrongIssuer,
    /// The callback's `iss` is [`OTHER_ISSUER`] (the token is fine): a
    /// mix-up attack.
    IssParameterMismatch,
    /// The callback has no `iss`, although discovery says it is sent.
    NoIssParameter,
    /// Userinfo answers about another `sub` than the ID token's.
    UserinfoSubjectMismatch,
    /// `POST /token` answers `307` to another URL of the stand-in, which
    /// would answer with a valid token (counted by
    /// [`OidcProvider::redirected_token_requests`]): the relying party must
    /// not follow it.
    TokenEndpointRedirects,
    /// `POST /token` waits this long before answering.
    SlowTokenEndpoint(Duration),
}

/// The redirect the authorization endpoint answered with, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    /// The whole `Location`.
    pub location: String,
    /// The redirect URI it leads to, without its query or fragment.
    pub redirect_uri: String,
    /// Every query parameter, in order, as the relying party's callback
    /// handler would receive them.
    pub params: Vec<(String, String)>,
    /// `code`, on success.
    pub code: Option<String>,
    /// `state`, as the authorization request had it.
    pub state: Option<String>,
    /// `iss` (RFC 9207).
    pub iss: Option<String>,
    /// `error`, when the provider refused the request.
    pub error: Option<String>,
}

impl Callback {
    /// Parses a `Location` the authorization endpoint answered with.
    pub fn parse(location: &str) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(location).with_context(|| format!("a redirect to {location:?}"))?;
        let params: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let param = |name: &str| {
            params
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        let (code, state, iss, error) = (param("code"), param("state"), param("iss"), param("error"));
        let mut base = url.clone();
        base.set_query(None);
        base.set_fragment(None);
        Ok(Self {
            location: location.to_owned(),
            redirect_uri: base.to_string(),
            params,
            code,
            state,
            iss,
            error,
        })
    }
}

/// How often each endpoint was asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    discovery: usize,
    jwks: usize,
    authorize: usize,
    token: usize,
    redirected_token: usize,
    userinfo: usize,
}

/// An EC P-256 signing key.
#[derive(Debug, Clone)]
struct SigningKey {
    kid: String,
    pkcs8: Vec<u8>,
    /// The affine coordinates, base64url.
    x: String,
    y: String,
    /// The SubjectPublicKeyInfo, DER.
    spki: Vec<u8>,
}

impl SigningKey {
    fn generate() -> anyhow::Result<Self> {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("generating a P-256 key failed"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("reading the new P-256 key failed"))?;
        // The uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        let (x, y) = match point {
            [4, rest @ ..] if rest.len() == 64 => rest.split_at(32),
            _ => anyhow::bail!("a P-256 public key is not a 65-byte uncompressed point"),
        };
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        let spki = pair
            .public_key()
            .as_der()
            .map_err(|_| anyhow::anyhow!("encoding the public key failed"))?
            .as_ref()
            .to_vec();
        // RFC 7638 thumbprint: SHA-256 of the required members, sorted.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        Ok(Self {
            kid,
            pkcs8: pkcs8.as_ref().to_vec(),
            x,
            y,
            spki,
        })
    }

    fn jwk(&self) -> Value {
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": self.x,
            "y": self.y,
            "kid": self.kid,
            "alg": "ES256",
            "use": "sig",
        })
    }

    fn public_key_pem(&self) -> String {
        let body = STANDARD.encode(&self.spki);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.pkcs8)).context("signing an ID token")
    }
}

/// An authorization code and what it was issued for.
#[derive(Debug, Clone)]
struct Grant {
    client_id: String,
    redirect_uri: String,
    nonce: Option<String>,
    code_challenge: String,
    scope: String,
    account: Account,
    auth_time: i64,
    used: bool,
}

#[derive(Debug)]
struct Registry {
    /// Oldest first; the last one signs.
    keys: Vec<SigningKey>,
    redirect_uris: Vec<String>,
    account: Account,
    script: Vec<Misbehaviour>,
    grants: HashMap<String, Grant>,
    /// Access token -> (the account, the code it was issued for).
    access_tokens: HashMap<String, (Account, String)>,
    counters: Counters,
    /// How each token request authenticated its client.
    client_auth: Vec<String>,
}

impl Registry {
    /// The last scripted misbehaviour `pick` recognises.
    fn last<T>(&self, pick: impl Fn(Misbehaviour) -> Option<T>) -> Option<T> {
        self.script.iter().rev().find_map(|m| pick(*m))
    }

    fn scripted(&self, misbehaviour: Misbehaviour) -> bool {
        self.script.contains(&misbehaviour)
    }

    fn signing_key(&self) -> anyhow::Result<&SigningKey> {
        self.keys.last().context("the stand-in has no signing key")
    }
}

#[derive(Debug)]
struct Shared {
    issuer: String,
    client_id: String,
    client_secret: String,
    /// Signs [`Misbehaviour::UnknownKid`] tokens; never published.
    rogue_key: SigningKey,
    registry: Mutex<Registry>,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running stand-in OpenID Provider; dropping the last clone stops it.
#[derive(Debug, Clone)]
pub struct OidcProvider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    http: reqwest::Client,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

impl OidcProvider {
    /// Starts the stand-in on a free loopback port, with the client
    /// [`CLIENT_ID`] / [`CLIENT_SECRET`] registered.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(CLIENT_ID, CLIENT_SECRET).await
    }

    /// Starts the stand-in with this client registered.
    pub async fn start_with(client_id: &str, client_secret: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            issuer: format!("http://{addr}"),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            rogue_key: SigningKey::generate()?,
            registry: Mutex::new(Registry {
                keys: vec![SigningKey::generate()?],
                redirect_uris: Vec::new(),
                account: Account::default(),
                script: Vec::new(),
                grants: HashMap::new(),
                access_tokens: HashMap::new(),
                counters: Counters::default(),
                client_auth: Vec::new(),
            }),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route(REDIRECTED_TOKEN_PATH, post(redirected_token))
            .route("/userinfo", get(userinfo).post(userinfo))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::warn!(error = %err, "the OpenID Provider stand-in stopped");
            }
        });
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the stand-in's own client")?;
        Ok(Self {
            addr,
            shared,
            http,
            task: Arc::new(task),
        })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its issuer identifier, `http://127.0.0.1:<port>` (no trailing slash);
    /// discovery is at `<issuer>/.well-known/openid-configuration`.
    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    /// The registered client's id.
    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }

    /// The registered client's secret.
    pub fn client_secret(&self) -> &str {
        &self.shared.client_secret
    }

    /// Registers a redirect URI; authorization requests must name one of
    /// those registered, exactly (none is by default).
    pub fn allow_redirect_uri(&self, redirect_uri: &str) {
        let mut registry = self.shared.registry();
        if !registry.redirect_uris.iter().any(|uri| uri == redirect_uri) {
            registry.redirect_uris.push(redirect_uri.to_owned());
        }
    }

    /// The account the next authorizations sign in (until changed; at first
    /// [`Account::default`]).
    pub fn sign_in_as(&self, account: Account) {
        self.shared.registry().account = account;
    }

    /// Misbehaves this way from now on, besides any misbehaviour already
    /// scripted, until [`Self::behave`].
    pub fn misbehave(&self, misbehaviour: Misbehaviour) {
        self.shared.registry().script.push(misbehaviour);
    }

    /// Stops every scripted misbehaviour.
    pub fn behave(&self) {
        self.shared.registry().script.clear();
    }

    /// Signs with a new key from now on; the JWKS publishes it beside the
    /// previous ones. Returns its `kid`.
    pub fn rotate_key(&self) -> anyhow::Result<String> {
        let key = SigningKey::generate()?;
        let kid = key.kid.clone();
        self.shared.registry().keys.push(key);
        Ok(kid)
    }

    /// The `kid` of the key that signs now.
    pub fn kid(&self) -> anyhow::Result<String> {
        Ok(self.shared.registry().signing_key()?.kid.clone())
    }

    /// The JWKS as `GET /jwks` answers it (without counting a fetch).
    pub fn jwks(&self) -> Value {
        jwks_json(&self.shared.registry())
    }

    /// The PEM of the signing key's public key: the HMAC secret of
    /// [`Misbehaviour::HmacWithPublicKey`].
    pub fn public_key_pem(&self) -> anyhow::Result<String> {
        Ok(self.shared.registry().signing_key()?.public_key_pem())
    }

    /// How many times the discovery document was fetched.
    pub fn discovery_fetches(&self) -> usize {
        self.shared.registry().counters.discovery
    }

    /// How many times the JWKS was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.shared.registry().counters.jwks
    }

    /// How many authorization requests came (valid or not).
    pub fn authorization_requests(&self) -> usize {
        self.shared.registry().counters.authorize
    }

    /// How many requests `POST /token` received (valid or not).
    pub fn token_requests(&self) -> usize {
        self.shared.registry().counters.token
    }

    /// How many token requests followed [`Misbehaviour::TokenEndpointRedirects`]'s
    /// redirect.
    pub fn redirected_token_requests(&self) -> usize {
        self.shared.registry().counters.redirected_token
    }

    /// How many userinfo requests came (valid or not).
    pub fn userinfo_requests(&self) -> usize {
        self.shared.registry().counters.userinfo
    }

    /// How each token request authenticated its client, in order:
    /// `client_secret_basic`, `client_secret_post` or `none`.
    pub fn client_authentications(&self) -> Vec<String> {
        self.shared.registry().client_auth.clone()
    }

    /// GETs `authorization_url` from the stand-in (without following the
    /// redirect), as a browser whose user signs in and consents would, and
    /// returns the redirect parsed. An error redirect (`error=...`) is a
    /// [`Callback`] too; a `400` page (no redirect) is an error carrying the
    /// page's text.
    pub async fn authorize(&self, authorization_url: &str) -> anyhow::Result<Callback> {
        let response = self
            .http
            .get(authorization_url)
            .send()
            .await
            .with_context(|| format!("GET {authorization_url}"))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(header::LOCATION)
                .context("a redirect without Location")?
                .to_str()
                .context("a Location that is not text")?
                .to_owned();
            return Callback::parse(&location);
        }
        let body = response.text().await.unwrap_or_default();
        anyhow::bail!("the authorization endpoint answered {status} without redirecting: {body}")
    }
}

/// Where [`Misbehaviour::TokenEndpointRedirects`] sends token requests.
const REDIRECTED_TOKEN_PATH: &str = "/token/elsewhere";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// 256 random bits, base64url: codes and access tokens.
fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// PKCE S256: base64url (no padding) of the SHA-256 of the verifier.
fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

fn jwks_json(registry: &Registry) -> Value {
    json!({ "keys": registry.keys.iter().map(SigningKey::jwk).collect::<Vec<_>>() })
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Response {
    shared.registry().counters.discovery += 1;
    let issuer = &shared.issuer;
    json_response(
        StatusCode::OK,
        &json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "userinfo_endpoint": format!("{issuer}/userinfo"),
            "jwks_uri": format!("{issuer}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": ["openid", "email", "profile"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "email", "email_verified", "name"],
            "authorization_response_iss_parameter_supported": true,
            "grant_types_supported": ["authorization_code"],
        }),
    )
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    let body = {
        let mut registry = shared.registry();
        registry.counters.jwks += 1;
        jwks_json(&registry)
    };
    json_response(StatusCode::OK, &body)
}

/// The `400` page for a request that must not be redirected.
fn refuse_page(reason: &str) -> Response {
    let reason = reason.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!("<!doctype html><title>Invalid request</title><h1>Invalid authorization request</h1><p>{reason}</p>"),
    )
        .into_response()
}

fn redirect(location: &reqwest::Url) -> Response {
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, location.as_str()),
            (header::CACHE_CONTROL, "no-store"),
        ],
    )
        .into_response()
}

async fn authorize(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let params: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let all = |name: &str| -> Vec<&str> {
        params
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .collect()
    };
    let one = |name: &str| match all(name)[..] {
        [value] => Some(value),
        _ => None,
    };
    let mut registry = shared.registry();
    registry.counters.authorize += 1;

    // Without a known client and a registered redirect URI there is no one
    // safe to redirect to.
    match all("client_id")[..] {
        [client_id] if client_id == shared.client_id => {}
        [] => return refuse_page("client_id is missing."),
        [_] => return refuse_page("client_id is not a registered client."),
        _ => return refuse_page("client_id is given more than once."),
    }
    let redirect_uri = match all("redirect_uri")[..] {
        [uri] if registry.redirect_uris.iter().any(|registered| registered == uri) => uri.to_owned(),
        [] => return refuse_page("redirect_uri is missing."),
        [_] => return refuse_page("redirect_uri is not registered for this client."),
        _ => return refuse_page("redirect_uri is given more than once."),
    };
    let Ok(mut location) = reqwest::Url::parse(&redirect_uri) else {
        return refuse_page("redirect_uri is not an absolute URL.");
    };

    let state = one("state");
    let iss = registry
        .last(|m| match m {
            Misbehaviour::NoIssParameter => Some(None),
            Misbehaviour::IssParameterMismatch => Some(Some(OTHER_ISSUER)),
            _ => None,
        })
        .unwrap_or(Some(shared.issuer.as_str()));
    let finish = |location: &mut reqwest::Url, pairs: &[(&str, &str)]| {
        let mut query = location.query_pairs_mut();
        for (key, value) in pairs {
            query.append_pair(key, value);
        }
        if let Some(state) = state {
            query.append_pair("state", state);
        }
        if let Some(iss) = iss {
            query.append_pair("iss", iss);
        }
    };
    let refusal = |error: &str, description: &str| -> Option<(String, String)> {
        Some((error.to_owned(), description.to_owned()))
    };

    let scope = one("scope").unwrap_or_default();
    let duplicated = [
        "response_type",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
    ]
    .into_iter()
    .find(|name| all(name).len() > 1);
    let refused = if let Some(name) = duplicated {
        refusal("invalid_request", &format!("{name} is given more than once"))
    } else if one("response_type") != Some("code") {
        refusal("unsupported_response_type", "only response_type=code is supported")
    } else if !scope.split(' ').any(|s| s == "openid") {
        refusal("invalid_request", "scope must contain openid")
    } else if one("code_challenge").is_none_or(str::is_empty) {
        refusal("invalid_request", "PKCE is required: code_challenge is missing")
    } else if one("code_challenge_method") != Some("S256") {
        refusal("invalid_request", "code_challenge_method must be S256")
    } else {
        None
    };
    if let Some((error, description)) = refused {
        finish(
            &mut location,
            &[("error", error.as_str()), ("error_description", description.as_str())],
        );
        return redirect(&location);
    }

    let code = random_token();
    let grant = Grant {
        client_id: shared.client_id.clone(),
        redirect_uri,
        nonce: one("nonce").map(str::to_owned),
        code_challenge: one("code_challenge").unwrap_or_default().to_owned(),
        scope: scope.to_owned(),
        account: registry.account.clone(),
        auth_time: now(),
        used: false,
    };
    registry.grants.insert(code.clone(), grant);
    finish(&mut location, &[("code", code.as_str())]);
    redirect(&location)
}

/// A token endpoint error (RFC 6749 §5.2).
struct TokenError {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// Ask for HTTP Basic (the client tried it and failed).
    challenge: bool,
}

impl TokenError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
            challenge: false,
        }
    }

    fn invalid_client(description: &str, challenge: bool) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: description.to_owned(),
            challenge,
        }
    }

    fn into_response(self) -> Response {
        let mut response = json_response(
            self.status,
            &json!({ "error": self.error, "error_description": self.description }),
        );
        if self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm=\"token\""),
            );
        }
        response
    }
}

async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (redirects, delay) = {
        let mut registry = shared.registry();
        registry.counters.token += 1;
        let delay = registry.last(|m| match m {
            Misbehaviour::SlowTokenEndpoint(delay) => Some(delay),
            _ => None,
        });
        (registry.scripted(Misbehaviour::TokenEndpointRedirects), delay)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    if redirects {
        let location = format!("{}{REDIRECTED_TOKEN_PATH}", shared.issuer);
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [
                (header::LOCATION, location.as_str()),
                (header::CACHE_CONTROL, "no-store"),
            ],
        )
            .into_response();
    }
    match exchange(&shared, &headers, &body) {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(err) => err.into_response(),
    }
}

/// Where a redirected token request lands: a working token endpoint.
async fn redirected_token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.registry().counters.redirected_token += 1;
    match exchange(&shared, &headers, &body) {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(err) => err.into_response(),
    }
}

/// One `application/x-www-form-urlencoded` component, decoded.
fn form_decode(component: &str) -> Option<String> {
    let spaced = component.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

/// `Authorization: Basic` credentials (RFC 6749 §2.3.1: each half
/// form-encoded before joining), if the header is Basic; `Err` if it is
/// Basic but unreadable.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, TokenError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let unreadable = || TokenError::invalid_client("unreadable Basic credentials", true);
    let value = value.to_str().map_err(|_| unreadable())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(unreadable());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(TokenError::invalid_client(
            "only Basic client authentication is accepted",
            true,
        ));
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| unreadable())?;
    let decoded = String::from_utf8(decoded).map_err(|_| unreadable())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(unreadable)?;
    Ok(Some((
        form_decode(id).ok_or_else(unreadable)?,
        form_decode(secret).ok_or_else(unreadable)?,
    )))
}

/// Redeems an authorization code: client authentication, the grant, PKCE;
/// then the tokens.
fn exchange(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<Value, TokenError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(TokenError::new(
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let mut single = HashMap::new();
    for (key, value) in &form {
        if single.insert(key.as_str(), value.as_str()).is_some() {
            return Err(TokenError::new(
                "invalid_request",
                format!("{key} is given more than once"),
            ));
        }
    }
    let param = |name: &str| single.get(name).copied();

    let basic = basic_credentials(headers)?;
    let (method, client_id, secret) = match (basic, param("client_secret")) {
        (Some(_), Some(_)) => {
            return Err(TokenError::new(
                "invalid_request",
                "the client authenticated in more than one way",
            ));
        }
        (Some((id, secret)), None) => {
            if param("client_id").is_some_and(|form_id| form_id != id) {
                return Err(TokenError::new(
                    "invalid_request",
                    "client_id differs from the authenticated client",
                ));
            }
            ("client_secret_basic", id, secret)
        }
        (None, Some(secret)) => (
            "client_secret_post",
            param("client_id").unwrap_or_default().to_owned(),
            secret.to_owned(),
        ),
        (None, None) => ("none", param("client_id").unwrap_or_default().to_owned(), String::new()),
    };
    let mut registry = shared.registry();
    registry.client_auth.push(method.to_owned());
    if method == "none" {
        return Err(TokenError::invalid_client("client authentication is required", false));
    }
    if client_id != shared.client_id || secret != shared.client_secret {
        return Err(TokenError::invalid_client(
            "unknown client or wrong secret",
            method == "client_secret_basic",
        ));
    }

    if param("grant_type") != Some("authorization_code") {
        return Err(TokenError::new(
            "unsupported_grant_type",
            "only authorization_code is supported",
        ));
    }
    let code = param("code").ok_or_else(|| TokenError::new("invalid_request", "code is missing"))?;
    let Some(grant) = registry.grants.get_mut(code) else {
        return Err(TokenError::new("invalid_grant", "unknown authorization code"));
    };
    if grant.used {
        // A replayed code: refuse it, and revoke what it was redeemed for.
        registry.access_tokens.retain(|_, (_, issued_for)| issued_for != code);
        return Err(TokenError::new(
            "invalid_grant",
            "the authorization code was already used",
        ));
    }
    // Single use, whatever happens next.
    grant.used = true;
    let grant = grant.clone();
    if grant.client_id != client_id {
        return Err(TokenError::new(
            "invalid_grant",
            "the code was issued to another client",
        ));
    }
    if param("redirect_uri") != Some(grant.redirect_uri.as_str()) {
        return Err(TokenError::new(
            "invalid_grant",
            "redirect_uri differs from the authorization request's",
        ));
    }
    match param("code_verifier") {
        Some(verifier) if s256(verifier) == grant.code_challenge => {}
        Some(_) => return Err(TokenError::new("invalid_grant", "code_verifier does not match")),
        None => return Err(TokenError::new("invalid_grant", "code_verifier is missing")),
    }

    let access_token = random_token();
    let id_token = id_token(shared, &registry, &grant, &access_token)
        .map_err(|err| TokenError::new("server_error", format!("{err:#}")))?;
    registry
        .access_tokens
        .insert(access_token.clone(), (grant.account.clone(), code.to_owned()));
    Ok(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME_SECS,
        "id_token": id_token,
        "scope": grant.scope,
    }))
}

/// The ID token for `grant`, as scripted.
fn id_token(shared: &Shared, registry: &Registry, grant: &Grant, access_token: &str) -> anyhow::Result<String> {
    let now = now();
    let (iat, exp) = registry
        .last(|m| match m {
            Misbehaviour::Expired => Some((now - 900, now - 600)),
            Misbehaviour::IssuedInTheFuture => Some((now + 600, now + 600 + TOKEN_LIFETIME_SECS)),
            _ => None,
        })
        .unwrap_or((now, now + TOKEN_LIFETIME_SECS));
    let iss = if registry.scripted(Misbehaviour::WrongIssuer) {
        OTHER_ISSUER
    } else {
        shared.issuer.as_str()
    };
    let client = grant.client_id.as_str();
    let (aud, azp) = registry
        .last(|m| match m {
            Misbehaviour::WrongAudience => Some((json!(OTHER_CLIENT_ID), None)),
            Misbehaviour::AzpMismatch => Some((json!([client, OTHER_CLIENT_ID]), Some(OTHER_CLIENT_ID))),
            Misbehaviour::MultipleAudiencesWithoutAzp => Some((json!([client, OTHER_CLIENT_ID]), None)),
            _ => None,
        })
        .unwrap_or((json!(client), None));
    let nonce = registry
        .last(|m| match m {
            Misbehaviour::WrongNonce => Some(Some("not-the-nonce-you-sent".to_owned())),
            Misbehaviour::MissingNonce => Some(None),
            _ => None,
        })
        .unwrap_or_else(|| grant.nonce.clone());
    // at_hash: the left half of the SHA-256 of the access token.
    let digest = Sha256::digest(access_token.as_bytes());
    let at_hash = URL_SAFE_NO_PAD.encode(digest.get(..16).unwrap_or_default());

    let account = &grant.account;
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(iss));
    claims.insert("sub".into(), json!(account.subject));
    claims.insert("aud".into(), aud);
    if let Some(azp) = azp {
        claims.insert("azp".into(), json!(azp));
    }
    claims.insert("exp".into(), json!(exp));
    claims.insert("iat".into(), json!(iat));
    claims.insert("auth_time".into(), json!(grant.auth_time.min(iat)));
    if let Some(nonce) = nonce {
        claims.insert("nonce".into(), json!(nonce));
    }
    claims.insert("at_hash".into(), json!(at_hash));
    claims.insert("email".into(), json!(account.email));
    claims.insert("email_verified".into(), json!(account.email_verified));
    claims.insert("name".into(), json!(account.name));
    let claims = Value::Object(claims);

    #[derive(Clone, Copy)]
    enum Signing {
        None,
        HmacWithPublicKey,
        UnknownKid,
    }
    let signing = registry.last(|m| match m {
        Misbehaviour::AlgNone => Some(Signing::None),
        Misbehaviour::HmacWithPublicKey => Some(Signing::HmacWithPublicKey),
        Misbehaviour::UnknownKid => Some(Signing::UnknownKid),
        _ => None,
    });
    let key = registry.signing_key()?;
    match signing {
        None => key.sign(&claims),
        Some(Signing::UnknownKid) => shared.rogue_key.sign(&claims),
        Some(Signing::None) => {
            let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
            let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
            Ok(format!("{header}.{payload}."))
        }
        Some(Signing::HmacWithPublicKey) => {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(key.kid.clone());
            let secret = EncodingKey::from_secret(key.public_key_pem().as_bytes());
            jsonwebtoken::encode(&header, &claims, &secret).context("signing an HS256 ID token")
        }
    }
}

async fn userinfo(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let mut registry = shared.registry();
    registry.counters.userinfo += 1;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some((account, _)) = token.and_then(|token| registry.access_tokens.get(token)) else {
        let mut response = json_response(
            StatusCode::UNAUTHORIZED,
            &json!({ "error": "invalid_token", "error_description": "unknown or missing access token" }),
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        return response;
    };
    let mut subject = account.subject.clone();
    if registry.scripted(Misbehaviour::UserinfoSubjectMismatch) {
        subject.push_str("-someone-else");
    }
    json_response(
        StatusCode::OK,
        &json!({
            "sub": subject,
            "email": account.email,
            "email_verified": account.email_verified,
            "name": account.name,
        }),
    )
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    const CALLBACK: &str = "http://127.0.0.1:9/auth/callback";
    const VERIFIER: &str = "dBjftJeZ4CVP-mJ0baTm0a8NQRCMkqGfuD9-wjPdaHMfZ";

    fn client() -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?)
    }

    fn authorization_url(provider: &OidcProvider, redirect_uri: &str) -> anyhow::Result<String> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/authorize", provider.issuer()),
            [
                ("response_type", "code"),
                ("client_id", provider.client_id()),
                ("redirect_uri", redirect_uri),
                ("scope", "openid email profile"),
                ("state", "st&te with spaces"),
                ("nonce", "n-0S6_WzA2Mj"),
                ("code_challenge", &s256(VERIFIER)),
                ("code_challenge_method", "S256"),
            ],
        )?;
        Ok(url.into())
    }

    async fn redeem(
        provider: &OidcProvider,
        code: &str,
        verifier: &str,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let response = client()?
            .post(format!("{}/token", provider.issuer()))
            .basic_auth(provider.client_id(), Some(provider.client_secret()))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", CALLBACK),
                ("code_verifier", verifier),
            ])
            .send()
            .await?;
        Ok((response.status(), response.json().await?))
    }

    async fn signed_in(provider: &OidcProvider) -> anyhow::Result<Callback> {
        provider.allow_redirect_uri(CALLBACK);
        provider.authorize(&authorization_url(provider, CALLBACK)?).await
    }

    #[tokio::test]
    async fn discovery_lists_the_endpoints() -> anyhow::Result<()> {
        let provider = OidcProvider::start().await?;
        let issuer = provider.issuer();
        let doc: Value = client()?
            .get(format!("{issuer}/.well-known/openid-configuration"))
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(doc["issuer"], json!(issuer));
        assert!(!issuer.ends_with('/'));
        assert_eq!(doc["authorization_endpoint"], json!(format!("{issuer}/authorize")));
        assert_eq!(doc["token_endpoint"], json!(format!("{issuer}/token")));
        assert_eq!(doc["userinfo_endpoint"], json!(format!("{issuer}/userinfo")));
        assert_eq!(doc["jwks_uri"], json!(format!("{issuer}/jwks")));
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(doc["authorization_response_iss_parameter_supported"], json!(true));
        assert_eq!(provider.discovery_fetches(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_whole_code_flow_by_hand() -> anyhow::Result<()> {
        let provider = OidcProvider::start().await?;
        let account = Account {
            subject: "sub-42".into(),
            email: "ada@example.com".into(),
            email_verified: true,
            name: "Ada".into(),
        };
        provider.sign_in_as(account.clone());
        let callback = signed_in(&provider).await?;
        assert_eq!(callback.redirect_uri, CALLBACK);
        assert_eq!(callback.state.as_deref(), Some("st&te with spaces"));
        assert_eq!(callback.iss.as_deref(), Some(provider.issuer()));
        let code = callback.code.context("no code")?;

        let (status, tokens) = redeem(&provider, &code, VERIFIER).await?;
        assert_eq!(status, reqwest::StatusCode::OK, "{tokens}");
        assert_eq!(tokens["token_type"], json!("Bearer"));
        assert_eq!(tokens["expires_in"], json!(300));
        let id_token = tokens["id_token"].as_str().context("no id_token")?;

        let jwks: Value = client()?
            .get(format!("{}/jwks", provider.issuer()))
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(provider.jwks_fetches(), 1);
        let header = jsonwebtoken::decode_header(id_token)?;
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        let jwk = jwks["keys"]
            .as_array()
            .context("no keys")?
            .iter()
            .find(|key| key["kid"].as_str() == header.kid.as_deref())
            .context("the kid is not in the JWKS")?;
        let key = DecodingKey::from_ec_components(jwk["x"].as_str().context("x")?, jwk["y"].as_str().context("y")?)?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[provider.client_id()]);
        validation.set_issuer(&[provider.issuer()]);
        let claims = jsonwebtoken::decode::<Value>(id_token, &key, &validation)?.claims;
        assert_eq!(claims["sub"], json!("sub-42"));
        assert_eq!(claims["nonce"], json!("n-0S6_WzA2Mj"));
        assert_eq!(claims["email"], json!("ada@example.com"));

        let access_token = tokens["access_token"].as_str().context("no access_token")?;
        let userinfo = client()?
            .get(format!("{}/userinfo", provider.issuer()))
            .bearer_auth(access_token)
            .send()
            .await?;
        assert_eq!(userinfo.status(), reqwest::StatusCode::OK);
        let userinfo: Value = userinfo.json().await?;
        assert_eq!(userinfo["sub"], json!("sub-42"));
        assert_eq!(userinfo["email_verified"], json!(true));

        let stranger = client()?
            .get(format!("{}/userinfo", provider.issuer()))
            .bearer_auth("not-a-token")
            .send()
            .await?;
        assert_eq!(stranger.status(), reqwest::StatusCode::UNAUTHORIZED);
        assert_eq!(provider.client_authentications(), ["client_secret_basic"]);
        Ok(())
    }

    #[tokio::test]
    async fn a_replayed_code_and_a_wrong_verifier_are_invalid_grants() -> anyhow::Result<()> {
        let provider = OidcProvider::start().await?;
        let code = signed_in(&provider).await?.code.context("no code")?;
        let (status, _) = redeem(&provider, &code, VERIFIER).await?;
        assert_eq!(status, reqwest::StatusCode::OK);
        let (status, body) = redeem(&provider, &code, VERIFIER).await?;
        assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], json!("invalid_grant"));

        let code = signed_in(&provider).await?.code.context("no code")?;
        let (status, body) = redeem(&provider, &code, "a-verifier-that-is-not-the-one-challenged-at-all").await?;
        assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], json!("invalid_grant"));
        assert_eq!(provider.token_requests(), 3);
        Ok(())
    }

    #[tokio::test]
    async fn an_unregistered_redirect_uri_is_refused_without_a_redirect() -> anyhow::Result<()> {
        let provider = OidcProvider::start().await?;
        provider.allow_redirect_uri(CALLBACK);
        let url = authorization_url(&provider, "http://127.0.0.1:9/auth/callback/evil")?;
        let response = client()?.get(&url).send().await?;
        assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST);
        assert!(response.headers().get(header::LOCATION).is_none());
        assert!(provider.authorize(&url).await.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn a_request_without_pkce_is_redirected_with_an_error() -> anyhow::Result<()> {
        let provider = OidcProvider::start().await?;
        provider.allow_redirect_uri(CALLBACK);
        let url = authorization_url(&provider, CALLBACK)?.replace("S256", "plain");
        let callback = provider.authorize(&url).await?;
        assert_eq!(callback.error.as_deref(), Some("invalid_request"));
        assert_eq!(callback.code, None);
        assert_eq!(callback.state.as_deref(), Some("st&te with spaces"));
        Ok(())
    }

    #[tokio::test]
    async fn misbehaviours_are_scripted() -> anyhow::Result<()> {
        let provider = OidcProvider::start().await?;
        provider.misbehave(Misbehaviour::AlgNone);
        provider.misbehave(Misbehaviour::NoIssParameter);
        let callback = signed_in(&provider).await?;
        assert_eq!(callback.iss, None);
        let (_, tokens) = redeem(&provider, &callback.code.context("no code")?, VERIFIER).await?;
        let id_token = tokens["id_token"].as_str().context("no id_token")?;
        assert!(id_token.ends_with('.'));
        let header = URL_SAFE_NO_PAD.decode(id_token.split('.').next().unwrap_or_default())?;
        assert_eq!(header, br#"{"alg":"none"}"#);

        provider.behave();
        provider.misbehave(Misbehaviour::HmacWithPublicKey);
        let callback = signed_in(&provider).await?;
        assert_eq!(callback.iss.as_deref(), Some(provider.issuer()));
        let (_, tokens) = redeem(&provider, &callback.code.context("no code")?, VERIFIER).await?;
        let id_token = tokens["id_token"].as_str().context("no id_token")?;
        let pem = provider.public_key_pem()?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[provider.client_id()]);
        let header = jsonwebtoken::decode_header(id_token)?;
        assert_eq!(header.kid, Some(provider.kid()?));
        jsonwebtoken::decode::<Value>(id_token, &DecodingKey::from_secret(pem.as_bytes()), &validation)?;

        provider.behave();
        let old = provider.kid()?;
        let new = provider.rotate_key()?;
        assert_ne!(old, new);
        assert_eq!(provider.jwks()["keys"].as_array().map(Vec::len), Some(2));

        provider.misbehave(Misbehaviour::TokenEndpointRedirects);
        let callback = signed_in(&provider).await?;
        let response = client()?
            .post(format!("{}/token", provider.issuer()))
            .basic_auth(provider.client_id(), Some(provider.client_secret()))
            .form(&[("grant_type", "authorization_code")])
            .send()
            .await?;
        assert_eq!(response.status(), reqwest::StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(provider.redirected_token_requests(), 0);
        // The code is still good: the redirect consumed nothing.
        provider.behave();
        let (status, _) = redeem(&provider, &callback.code.context("no code")?, VERIFIER).await?;
        assert_eq!(status, reqwest::StatusCode::OK);
        Ok(())
    }

    #[tokio::test]
    async fn misbehaving_claims_are_what_they_say() -> anyhow::Result<()> {
        let provider = OidcProvider::start().await?;
        let claims_when = async |misbehaviour| -> anyhow::Result<(Header, Value, Value)> {
            provider.behave();
            provider.misbehave(misbehaviour);
            let code = signed_in(&provider).await?.code.context("no code")?;
            let (status, tokens) = redeem(&provider, &code, VERIFIER).await?;
            assert_eq!(status, reqwest::StatusCode::OK, "{tokens}");
            let id_token = tokens["id_token"].as_str().context("no id_token")?;
            let data = jsonwebtoken::dangerous::insecure_decode::<Value>(id_token)?;
            let userinfo: Value = client()?
                .get(format!("{}/userinfo", provider.issuer()))
                .bearer_auth(tokens["access_token"].as_str().context("no access_token")?)
                .send()
                .await?
                .json()
                .await?;
            Ok((data.header, data.claims, userinfo))
        };
        let client_id = provider.client_id().to_owned();

        let (_, claims, _) = claims_when(Misbehaviour::WrongAudience).await?;
        assert_eq!(claims["aud"], json!(OTHER_CLIENT_ID));
        let (_, claims, _) = claims_when(Misbehaviour::AzpMismatch).await?;
        assert_eq!(claims["aud"], json!([client_id, OTHER_CLIENT_ID]));
        assert_eq!(claims["azp"], json!(OTHER_CLIENT_ID));
        let (_, claims, _) = claims_when(Misbehaviour::MultipleAudiencesWithoutAzp).await?;
        assert_eq!(claims["aud"], json!([client_id, OTHER_CLIENT_ID]));
        assert_eq!(claims.get("azp"), None);
        let (_, claims, _) = claims_when(Misbehaviour::Expired).await?;
        assert!(claims["exp"].as_i64() < Some(now()));
        let (_, claims, _) = claims_when(Misbehaviour::IssuedInTheFuture).await?;
        assert!(claims["iat"].as_i64() > Some(now() + 300));
        let (_, claims, _) = claims_when(Misbehaviour::WrongNonce).await?;
        assert_eq!(claims["nonce"], json!("not-the-nonce-you-sent"));
        let (_, claims, _) = claims_when(Misbehaviour::MissingNonce).await?;
        assert_eq!(claims.get("nonce"), None);
        let (_, claims, _) = claims_when(Misbehaviour::WrongIssuer).await?;
        assert_eq!(claims["iss"], json!(OTHER_ISSUER));
        let (header, _, _) = claims_when(Misbehaviour::UnknownKid).await?;
        let published: Vec<Value> = provider.jwks()["keys"].as_array().cloned().unwrap_or_default();
        assert!(header.kid.is_some());
        assert!(published.iter().all(|key| key["kid"].as_str() != header.kid.as_deref()));
        let (_, claims, userinfo) = claims_when(Misbehaviour::UserinfoSubjectMismatch).await?;
        assert_ne!(claims["sub"], userinfo["sub"]);

        provider.behave();
        provider.misbehave(Misbehaviour::IssParameterMismatch);
        assert_eq!(signed_in(&provider).await?.iss.as_deref(), Some(OTHER_ISSUER));

        provider.behave();
        provider.misbehave(Misbehaviour::SlowTokenEndpoint(Duration::from_millis(300)));
        let code = signed_in(&provider).await?.code.context("no code")?;
        let started = std::time::Instant::now();
        let (status, _) = redeem(&provider, &code, VERIFIER).await?;
        assert_eq!(status, reqwest::StatusCode::OK);
        assert!(started.elapsed() >= Duration::from_millis(300));
        Ok(())
    }
}
