//! Service tokens: what a service presents when it calls another one.
//!
//! [`ServiceTokenSource`] is the client-credentials flow: it asks auth's
//! IssueServiceToken for a token, keeps it, renews it before it expires, and
//! recovers by itself when auth was down.

use std::{fmt, future::Future, pin::Pin, time::Duration};

use anyhow::Context as _;
use keel::auth::v1::{IssueServiceTokenRequest, auth_service_client::AuthServiceClient};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::{sync::Mutex, time::Instant};
use tonic::transport::Channel;

/// The boxed future a [`TokenProvider`] returns.
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<String>> + Send + 'a>>;

/// Supplies the bearer token a service presents to other services.
pub trait TokenProvider: Send + Sync + fmt::Debug {
    /// A token valid for at least the next minute.
    fn token(&self) -> TokenFuture<'_>;
}

/// A service's client id and secret, as registered on auth.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// The client id (a service's name).
    pub client_id: String,
    /// The secret.
    pub client_secret: SecretString,
}

/// A token renews once less than this much of its life is left (auth's
/// tokens live 15 minutes).
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);
/// A cached token is still handed out while auth cannot be reached, as long
/// as it has at least this long to live.
const MIN_REMAINING: Duration = Duration::from_secs(30);
/// After a failed fetch, callers get that failure at once for this long
/// rather than each waiting on an auth that is down.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(500);
/// The longest one IssueServiceToken call may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Client-credentials tokens from auth, cached until they are due for renewal.
#[derive(Debug)]
pub struct ServiceTokenSource {
    auth: Channel,
    credentials: ClientCredentials,
    scopes: Vec<String>,
    renew_before: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    token: Option<Cached>,
    failed: Option<(Instant, String)>,
}

#[derive(Debug)]
struct Cached {
    token: SecretString,
    renew_at: Instant,
    expires_at: Instant,
}

impl ServiceTokenSource {
    /// Tokens for `credentials` with `scopes` (all the client's scopes when
    /// empty) from auth at `auth`.
    pub fn new(auth: Channel, credentials: ClientCredentials, scopes: &[&str]) -> Self {
        Self {
            auth,
            credentials,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            renew_before: DEFAULT_RENEW_BEFORE,
            state: Mutex::new(State::default()),
        }
    }

    /// Renews a token once less than `renew_before` of its life is left.
    pub fn renew_before(mut self, renew_before: Duration) -> Self {
        self.renew_before = renew_before;
        self
    }

    async fn fetch(&self) -> anyhow::Result<Cached> {
        let mut client = AuthServiceClient::new(self.auth.clone());
        let mut request = tonic::Request::new(IssueServiceTokenRequest {
            client_id: self.credentials.client_id.clone(),
            client_secret: self.credentials.client_secret.expose_secret().to_owned(),
            scopes: self.scopes.clone(),
        });
        request.set_timeout(FETCH_TIMEOUT);
        let asked = Instant::now();
        let response = tokio::time::timeout(FETCH_TIMEOUT, client.issue_service_token(request))
            .await
            .map_err(|_| anyhow::anyhow!("auth did not answer within {FETCH_TIMEOUT:?}"))?
            .with_context(|| format!("IssueServiceToken for {}", self.credentials.client_id))?
            .into_inner();
        let lifetime = response
            .expire_time
            .and_then(|t| std::time::SystemTime::try_from(t).ok())
            .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())
            .context("IssueServiceToken answered without a future expire_time")?;
        let expires_at = asked + lifetime;
        Ok(Cached {
            token: response.access_token.into(),
            renew_at: expires_at.checked_sub(self.renew_before).unwrap_or(asked),
            expires_at,
        })
    }
}

impl TokenProvider for ServiceTokenSource {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            // One caller fetches; the others wait for its token.
            let mut state = self.state.lock().await;
            let now = Instant::now();
            if let Some(cached) = &state.token
                && now < cached.renew_at
            {
                return Ok(cached.token.expose_secret().to_owned());
            }
            if let Some((at, error)) = &state.failed
                && now < *at + RETRY_AFTER_FAILURE
            {
                return still_valid(&state, now).ok_or_else(|| anyhow::anyhow!("{error}"));
            }
            match self.fetch().await {
                Ok(fresh) => {
                    let token = fresh.token.expose_secret().to_owned();
                    *state = State {
                        token: Some(fresh),
                        failed: None,
                    };
                    Ok(token)
                }
                Err(err) => {
                    let message = format!("getting a service token: {err:#}");
                    state.failed = Some((Instant::now(), message.clone()));
                    match still_valid(&state, now) {
                        Some(token) => {
                            tracing::warn!(error = %message, "renewing the service token failed; the current one is still valid");
                            Ok(token)
                        }
                        None => Err(anyhow::anyhow!(message)),
                    }
                }
            }
        })
    }
}

/// The cached token, if it lives long enough to be worth sending.
fn still_valid(state: &State, now: Instant) -> Option<String> {
    state
        .token
        .as_ref()
        .filter(|cached| now + MIN_REMAINING < cached.expires_at)
        .map(|cached| cached.token.expose_secret().to_owned())
}
