//! What auth does, apart from how it is called: the service's state
//! ([`Auth`]) and its operations, one file per capability. The gRPC adapters
//! in `service/` call these; nothing here knows gRPC's requests or answers.
//!
//! - [`registration`] holds [`Auth::register`], [`Auth::verify_email`] and
//!   [`Auth::create_user`];
//! - [`login`] holds [`Auth::login`] and [`Auth::refresh`], behind the
//!   [`throttle`]s;
//! - [`sessions`] holds [`Auth::logout`], [`Auth::list_sessions`] and
//!   [`Auth::revoke_session`];
//! - [`passwords`] holds [`Auth::change_password`],
//!   [`Auth::request_password_reset`] and [`Auth::reset_password`];
//! - [`providers`] holds sign-in with identity providers
//!   ([`Auth::start_provider_sign_in`], [`Auth::finish_provider_sign_in`],
//!   [`Auth::exchange_sign_in_code`]) and linked identities;
//! - [`second_factor`] holds the TOTP second factor ([`Auth::enroll_totp`],
//!   [`Auth::confirm_totp`], [`Auth::disable_totp`]) and the challenge a
//!   sign-in answers for a user who has one ([`Auth::verify_second_factor`]);
//! - [`admin`] holds [`Auth::set_user_roles`] and [`Auth::disable_user`];
//! - [`service_tokens`] holds [`Auth::issue_service_token`] and [`Auth::jwks`];
//! - [`revocations`] holds the feed every verifier follows
//!   ([`Auth::watch_revocations`]);
//! - background work: [`reload_keys`] and [`throttle::prune`].

pub mod admin;
pub mod login;
pub mod passwords;
pub mod providers;
pub mod registration;
pub mod revocations;
pub mod second_factor;
pub mod service_tokens;
pub mod sessions;
pub mod throttle;

use std::{net::IpAddr, sync::Arc, time::Duration as StdDuration};

use anyhow::Context as _;
use chrono::Duration;
use keel::auth::v1::Jwk;
use keel_platform::{
    Error,
    auth::scopes,
    auth::service_token::{TokenFuture, TokenProvider},
    auth::verifier::{KeySource, KeysFuture, Verifier},
    config::TokenConfig,
    db::Pool,
    events::EventType,
    registry,
    sealing::SealingKey,
    serve::metrics::Metrics,
};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use login::{SignIn, SignedIn, Tokens};
pub use revocations::RevocationFeed;
pub use service_tokens::ServiceToken;

use crate::{
    clients::ServiceClients,
    config::{AuthConfig, CallLimits, LoginThrottle, SessionLimits},
    domain::OpaqueToken,
    keys::{self, KeyRing},
    password::Hasher,
};

/// How long a password reset token lives.
pub const RESET_TOKEN_TTL: Duration = Duration::hours(1);
/// How long an email verification token lives.
pub const VERIFICATION_TOKEN_TTL: Duration = Duration::days(7);
/// The event source name of auth: its service name, which is also the client
/// id its relay's tokens carry (consumers check that they match).
pub const SOURCE: &str = registry::AUTH;

/// The auth service's state: everything its operations need. Clones share it.
#[derive(Clone)]
pub struct Auth {
    pool: Pool,
    hasher: Hasher,
    keys: KeyRing,
    clients: Arc<ServiceClients>,
    login_throttle: LoginThrottle,
    call_limits: CallLimits,
    session_limits: SessionLimits,
    /// Peers whose `x-forwarded-for` is believed.
    trusted_proxies: Arc<[IpAddr]>,
    /// New revocations, for WatchRevocations and auth's own verifier.
    revocations: RevocationFeed,
    /// Seals the one-time tokens in events for their consumer.
    event_secrets: Option<SealingKey>,
    /// Seals second-factor secrets at rest (the signing keys' key).
    key_encryption_key: Option<SealingKey>,
    /// The issuer authenticator apps show beside a second factor.
    totp_issuer: Arc<str>,
    /// How second-factor operations end.
    second_factor_metrics: second_factor::metrics::SecondFactorMetrics,
    /// The identity providers users may sign in with.
    providers: Arc<crate::oidc::Providers>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("login_throttle", &self.login_throttle)
            .field("call_limits", &self.call_limits)
            .field("session_limits", &self.session_limits)
            .finish_non_exhaustive()
    }
}

/// Who is on the other end of a call, for sessions and throttling.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// The client's address (the proxy's when no trusted proxy named it);
    /// None when the transport has none.
    pub address: Option<IpAddr>,
    /// Its user agent, cut to 256 characters.
    pub user_agent: String,
}

impl Auth {
    /// Auth over the (migrated) database of `pool`, with its signing keys
    /// loaded (the first one generated if there is none); `extra_clients`
    /// are service clients besides the configured ones.
    pub async fn build(config: &AuthConfig, pool: Pool, extra_clients: &[SecretString]) -> anyhow::Result<Self> {
        registration::fill_email_skeletons(&pool).await?;
        let tokens = &config.service.tokens;
        let keys = KeyRing::load(
            &pool,
            &tokens.token_issuer,
            &tokens.token_audience,
            config.key_encryption_key.clone(),
        )
        .await
        .context("loading the signing keys")?
        .with_access_ttl(chrono::Duration::seconds(i64::from(config.access_token_ttl_secs)));
        second_factor::protect_secrets(&pool, config.key_encryption_key.as_ref())
            .await
            .context("sealing the second factors' secrets")?;
        anyhow::ensure!(
            !config.totp_issuer.is_empty() && !config.totp_issuer.contains(':'),
            "KEEL_TOTP_ISSUER must be a name without a colon (it is the label's prefix in otpauth URIs)"
        );
        if config.event_secrets_key.is_none() {
            tracing::warn!(
                "KEEL_EVENT_SECRETS_KEY is not set: password-reset and email-verification events carry \
                 no token, so no mail can carry one"
            );
        }
        let revocations = RevocationFeed::new(pool.clone());
        Ok(Auth {
            hasher: Hasher::new(config.hash_cost()?, config.hash_concurrency())?,
            keys,
            clients: Arc::new(ServiceClients::new(config.service_clients(extra_clients)?)),
            login_throttle: config.login_throttle(),
            call_limits: config.call_limits(),
            session_limits: config.session_limits(),
            trusted_proxies: config.trusted_proxies.clone().into(),
            revocations,
            event_secrets: config.event_secrets_key.clone(),
            key_encryption_key: config.key_encryption_key.clone(),
            totp_issuer: config.totp_issuer.as_str().into(),
            second_factor_metrics: second_factor::metrics::SecondFactorMetrics::default(),
            providers: Arc::new(config.identity_providers()?),
            pool,
        })
    }

    /// The verifier for tokens auth itself issued: keys come straight from
    /// the key ring, not over the network, and revocations from the feed
    /// (until `shutdown`).
    pub fn verifier(&self, tokens: &TokenConfig, shutdown: CancellationToken) -> Arc<Verifier> {
        let verifier = Arc::new(Verifier::new(
            &tokens.token_issuer,
            &tokens.token_audience,
            Arc::new(LocalKeys {
                keys: self.keys.clone(),
                pool: self.pool.clone(),
            }),
        ));
        verifier.follow_revocations(Arc::new(self.revocations.clone()), shutdown);
        verifier
    }

    /// Tokens for auth's own relay, signed in-process (auth is the issuer).
    pub fn own_service_tokens(&self) -> Arc<dyn TokenProvider> {
        Arc::new(OwnServiceTokens(self.keys.clone()))
    }

    /// Publishes auth's own metrics (the hashing queue).
    pub fn register_metrics(&self, metrics: &Metrics) {
        self.hasher.register_metrics(metrics);
        self.second_factor_metrics.register(metrics);
        self.providers.metrics.register(metrics);
    }

    /// The revocation feed, for [`RevocationFeed::run`].
    pub fn revocation_feed(&self) -> &RevocationFeed {
        &self.revocations
    }

    /// The proxies whose `x-forwarded-for` names the client.
    pub fn trusted_proxies(&self) -> &[IpAddr] {
        &self.trusted_proxies
    }

    /// The key ring (for rotation from the command line).
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// The database pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// `token` sealed for the consumer of `event_type` events about
    /// `user_id`; None without an event secrets key.
    fn seal_token(
        &self,
        event_type: EventType,
        user_id: Uuid,
        token: &OpaqueToken,
    ) -> Result<Option<keel::events::v1::SealedSecret>, Error> {
        self.event_secrets
            .as_ref()
            .map(|key| key.seal_event_secret(event_type, &user_id.to_string(), token.expose()))
            .transpose()
            .map_err(Error::Internal)
    }
}

/// Re-reads the signing keys every [`keys::KEY_RELOAD_INTERVAL`] until
/// `shutdown`, to follow a rotation made by another process.
pub async fn reload_keys(auth: Auth, shutdown: CancellationToken) {
    let every = keys::KEY_RELOAD_INTERVAL.to_std().unwrap_or(StdDuration::from_secs(30));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(err) = auth.keys.reload(&auth.pool).await {
            tracing::warn!(error = format!("{err:#}"), "re-reading the signing keys failed");
        }
    }
}

/// Auth's own keys for its verifier. Asked only when a token names an unknown
/// key, so it re-reads the database first: another replica may have rotated.
#[derive(Debug)]
struct LocalKeys {
    keys: KeyRing,
    pool: Pool,
}

impl KeySource for LocalKeys {
    fn fetch(&self) -> KeysFuture<'_> {
        Box::pin(async move {
            self.keys.reload(&self.pool).await?;
            Ok::<Vec<Jwk>, anyhow::Error>(self.keys.jwks().await)
        })
    }
}

/// Tokens for auth's own relay, signed in-process.
#[derive(Debug)]
struct OwnServiceTokens(KeyRing);

impl TokenProvider for OwnServiceTokens {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            let scopes = [scopes::EVENTS_DELIVER.to_owned()];
            Ok(self.0.service_token(registry::AUTH, &scopes).await?.0)
        })
    }
}

/// Sign-in and password changes refuse to finish over a password or account
/// that changed under them.
fn credentials_changed() -> Error {
    Error::unauthenticated(
        "CREDENTIALS_CHANGED",
        "the password or the account changed during sign-in; log in again",
    )
}
