//! The `keel.auth.v1.AuthService` implementation: proto in, domain types,
//! store calls, proto out; every error leaves as a `Status` through
//! [`keel_platform::Error`].
//!
//! The trait impl below only adapts gRPC to the handlers: it reads the
//! caller and the client from the request, then hands the message to a
//! function of the resource's module, which returns `Result<_, Error>`.

mod admin;
mod login;
mod passwords;
mod registration;
mod revocations;
mod service_tokens;
mod sessions;
mod throttle;

pub(crate) use registration::fill_email_skeletons;

use std::{net::IpAddr, sync::Arc};

use chrono::{DateTime, Duration, Utc};
use keel::auth::v1::{self as pb, auth_service_server::AuthService};
use keel_platform::{
    Error, Role,
    db::Pool,
    principal,
    proto::timestamp,
    serve::audit,
    serve::client_address::{FORWARDED_FOR, client_address},
    serve::rpc::Reply,
};
use tonic::{Request, Response};

use crate::{clients::ServiceClients, domain::Roles, keys::KeyRing, password::Hasher, store::UserRow};

/// How long a password reset token lives.
pub const RESET_TOKEN_TTL: Duration = Duration::hours(1);
/// How long an email verification token lives.
pub const VERIFICATION_TOKEN_TTL: Duration = Duration::days(7);
/// The event source name of auth: its service name, which is also the client
/// id its relay's tokens carry (consumers check that they match).
pub const SOURCE: &str = keel_platform::registry::AUTH;

pub use throttle::{CallLimits, LoginThrottle};

/// How long a session (a sign-in and its refresh tokens) may last.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// From sign-in; refreshing does not extend it.
    pub max_lifetime: Duration,
    /// A session not refreshed for this long ends.
    pub idle_timeout: Duration,
}

impl SessionLimits {
    /// When a session that signed in at `signed_in` ends if it is not used
    /// again after `now`: its refresh token expires then too.
    pub fn expiry(&self, signed_in: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
        (now + self.idle_timeout).min(signed_in + self.max_lifetime)
    }
}

/// The auth service: everything its calls need.
#[derive(Clone)]
pub struct Auth {
    pub(crate) pool: Pool,
    pub(crate) hasher: Hasher,
    pub(crate) keys: KeyRing,
    pub(crate) clients: Arc<ServiceClients>,
    pub(crate) login_throttle: LoginThrottle,
    pub(crate) call_limits: CallLimits,
    pub(crate) session_limits: SessionLimits,
    /// Peers whose `x-forwarded-for` is believed.
    pub(crate) trusted_proxies: Arc<[IpAddr]>,
    /// New revocations, for WatchRevocations and auth's own verifier.
    pub(crate) revocations: crate::revocations::RevocationFeed,
    /// Seals the one-time tokens in events for their consumer.
    pub(crate) event_secrets: Option<keel_platform::sealing::SealingKey>,
}

impl Auth {
    /// `token` sealed for the consumer of `event_type` events about
    /// `user_id`; None without an event secrets key.
    pub(crate) fn seal_token(
        &self,
        event_type: keel_platform::events::EventType,
        user_id: uuid::Uuid,
        token: &crate::domain::OpaqueToken,
    ) -> Result<Option<keel::events::v1::SealedSecret>, Error> {
        self.event_secrets
            .as_ref()
            .map(|key| key.seal_event_secret(event_type, &user_id.to_string(), token.expose()))
            .transpose()
            .map_err(Error::Internal)
    }
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

#[tonic::async_trait]
impl AuthService for Auth {
    type WatchRevocationsStream = revocations::Stream;

    async fn watch_revocations(
        &self,
        request: Request<pb::WatchRevocationsRequest>,
    ) -> Reply<Self::WatchRevocationsStream> {
        Ok(Response::new(revocations::watch(self, request.into_inner())))
    }

    async fn register(&self, request: Request<pb::RegisterRequest>) -> Reply<pb::RegisterResponse> {
        let client = ClientInfo::of(&request, &self.trusted_proxies);
        Ok(Response::new(
            registration::register(self, request.into_inner(), &client).await?,
        ))
    }

    async fn login(&self, request: Request<pb::LoginRequest>) -> Reply<pb::LoginResponse> {
        let client = ClientInfo::of(&request, &self.trusted_proxies);
        Ok(Response::new(login::login(self, request.into_inner(), &client).await?))
    }

    async fn refresh(&self, request: Request<pb::RefreshRequest>) -> Reply<pb::RefreshResponse> {
        Ok(Response::new(login::refresh(self, request.into_inner()).await?))
    }

    async fn logout(&self, request: Request<pb::LogoutRequest>) -> Reply<pb::LogoutResponse> {
        Ok(Response::new(sessions::logout(self, request.into_inner()).await?))
    }

    async fn list_sessions(&self, request: Request<pb::ListSessionsRequest>) -> Reply<pb::ListSessionsResponse> {
        let caller = principal(&request)?.user()?.clone();
        Ok(Response::new(
            sessions::list(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn revoke_session(&self, request: Request<pb::RevokeSessionRequest>) -> Reply<pb::RevokeSessionResponse> {
        let caller = principal(&request)?.user()?.clone();
        Ok(Response::new(
            sessions::revoke(self, &caller, request.into_inner()).await?,
        ))
    }

    async fn change_password(&self, request: Request<pb::ChangePasswordRequest>) -> Reply<pb::ChangePasswordResponse> {
        let caller = principal(&request)?.user()?.clone();
        let client = ClientInfo::of(&request, &self.trusted_proxies);
        Ok(Response::new(
            passwords::change(self, &caller, request.into_inner(), &client).await?,
        ))
    }

    async fn request_password_reset(
        &self,
        request: Request<pb::RequestPasswordResetRequest>,
    ) -> Reply<pb::RequestPasswordResetResponse> {
        let client = ClientInfo::of(&request, &self.trusted_proxies);
        Ok(Response::new(
            passwords::request_reset(self, request.into_inner(), &client).await?,
        ))
    }

    async fn reset_password(&self, request: Request<pb::ResetPasswordRequest>) -> Reply<pb::ResetPasswordResponse> {
        Ok(Response::new(passwords::reset(self, request.into_inner()).await?))
    }

    async fn verify_email(&self, request: Request<pb::VerifyEmailRequest>) -> Reply<pb::VerifyEmailResponse> {
        Ok(Response::new(
            registration::verify_email(self, request.into_inner()).await?,
        ))
    }

    async fn get_jwks(&self, request: Request<pb::GetJwksRequest>) -> Reply<pb::GetJwksResponse> {
        Ok(Response::new(service_tokens::jwks(self, request.into_inner()).await?))
    }

    async fn issue_service_token(
        &self,
        request: Request<pb::IssueServiceTokenRequest>,
    ) -> Reply<pb::IssueServiceTokenResponse> {
        let client = ClientInfo::of(&request, &self.trusted_proxies);
        Ok(Response::new(
            service_tokens::issue(self, request.into_inner(), &client).await?,
        ))
    }

    async fn set_user_roles(&self, request: Request<pb::SetUserRolesRequest>) -> Reply<pb::SetUserRolesResponse> {
        principal(&request)?.admin()?;
        Ok(Response::new(admin::set_user_roles(self, request.into_inner()).await?))
    }

    async fn disable_user(&self, request: Request<pb::DisableUserRequest>) -> Reply<pb::DisableUserResponse> {
        let admin = principal(&request)?.admin()?.clone();
        Ok(Response::new(
            admin::disable_user(self, &admin, request.into_inner()).await?,
        ))
    }
}

/// Who is on the other end of a call, for sessions and throttling.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientInfo {
    pub address: Option<IpAddr>,
    pub user_agent: String,
}

impl ClientInfo {
    fn of<T>(request: &Request<T>, trusted_proxies: &[IpAddr]) -> Self {
        let user_agent = request
            .metadata()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .chars()
            .take(256)
            .collect();
        let address = request.remote_addr().map(|peer| {
            let forwarded = request
                .metadata()
                .get_all(FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok());
            client_address(peer.ip(), forwarded, trusted_proxies)
        });
        if let Some(address) = address {
            audit::record_client(address);
        }
        ClientInfo { address, user_agent }
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

pub(crate) fn user_pb(user: &UserRow) -> pb::User {
    pb::User {
        id: user.id.to_string(),
        email: user.email.clone(),
        email_verified: user.email_verified,
        roles: Roles::from_names(&user.roles)
            .as_slice()
            .iter()
            .map(|role| match role {
                Role::User => pb::Role::User as i32,
                Role::Admin => pb::Role::Admin as i32,
            })
            .collect(),
        disabled: user.disabled,
        create_time: Some(timestamp(user.created_at)),
    }
}
