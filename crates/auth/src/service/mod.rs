//! The `keel.auth.v1.AuthService` implementation: adapters only. The
//! trait impl below reads the caller and the client from the request and
//! hands the message to a function of the resource's module, which parses
//! it, calls one operation of [`Auth`] and maps the answer;
//! every error leaves as a `Status` through [`keel_platform::Error`].

mod admin;
mod login;
mod passwords;
mod providers;
mod registration;
mod revocations;
mod service_tokens;
mod sessions;
mod totp;

use std::net::IpAddr;

use keel::auth::v1::{self as pb, auth_service_server::AuthService};
use keel_platform::{
    Role, principal,
    proto::timestamp,
    serve::audit,
    serve::client_address::{FORWARDED_FOR, client_address},
    serve::rpc::Reply,
};
use tonic::{Request, Response};

use crate::{
    app::{Auth, ClientInfo},
    domain::Roles,
    store::users::UserRow,
};

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
        let client = client_info(&request, self.trusted_proxies());
        Ok(Response::new(
            registration::register(self, request.into_inner(), &client).await?,
        ))
    }

    async fn login(&self, request: Request<pb::LoginRequest>) -> Reply<pb::LoginResponse> {
        let client = client_info(&request, self.trusted_proxies());
        Ok(Response::new(login::login(self, request.into_inner(), &client).await?))
    }

    async fn verify_second_factor(
        &self,
        request: Request<pb::VerifySecondFactorRequest>,
    ) -> Reply<pb::VerifySecondFactorResponse> {
        let client = client_info(&request, self.trusted_proxies());
        Ok(Response::new(
            login::verify_second_factor(self, request.into_inner(), &client).await?,
        ))
    }

    async fn list_identity_providers(
        &self,
        _request: Request<pb::ListIdentityProvidersRequest>,
    ) -> Reply<pb::ListIdentityProvidersResponse> {
        Ok(Response::new(providers::list_providers(self)))
    }

    async fn start_provider_sign_in(
        &self,
        request: Request<pb::StartProviderSignInRequest>,
    ) -> Reply<pb::StartProviderSignInResponse> {
        let caller = principal(&request)
            .ok()
            .and_then(|p| p.user().ok())
            .map(|user| user.user_id);
        Ok(Response::new(
            providers::start(self, caller, request.into_inner()).await?,
        ))
    }

    async fn finish_provider_sign_in(
        &self,
        request: Request<pb::FinishProviderSignInRequest>,
    ) -> Reply<pb::FinishProviderSignInResponse> {
        Ok(Response::new(providers::finish(self, request.into_inner()).await?))
    }

    async fn exchange_sign_in_code(
        &self,
        request: Request<pb::ExchangeSignInCodeRequest>,
    ) -> Reply<pb::ExchangeSignInCodeResponse> {
        let client = client_info(&request, self.trusted_proxies());
        Ok(Response::new(
            providers::exchange(self, request.into_inner(), &client).await?,
        ))
    }

    async fn list_linked_identities(
        &self,
        request: Request<pb::ListLinkedIdentitiesRequest>,
    ) -> Reply<pb::ListLinkedIdentitiesResponse> {
        let user_id = principal(&request)?.user()?.user_id;
        Ok(Response::new(providers::list_identities(self, user_id).await?))
    }

    async fn unlink_identity(&self, request: Request<pb::UnlinkIdentityRequest>) -> Reply<pb::UnlinkIdentityResponse> {
        let user_id = principal(&request)?.user()?.user_id;
        Ok(Response::new(
            providers::unlink(self, user_id, request.into_inner()).await?,
        ))
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
        let client = client_info(&request, self.trusted_proxies());
        Ok(Response::new(
            passwords::change(self, &caller, request.into_inner(), &client).await?,
        ))
    }

    async fn enroll_totp(&self, request: Request<pb::EnrollTotpRequest>) -> Reply<pb::EnrollTotpResponse> {
        let caller = principal(&request)?.user()?.clone();
        Ok(Response::new(totp::enroll(self, &caller, request.into_inner()).await?))
    }

    async fn confirm_totp(&self, request: Request<pb::ConfirmTotpRequest>) -> Reply<pb::ConfirmTotpResponse> {
        let caller = principal(&request)?.user()?.clone();
        let client = client_info(&request, self.trusted_proxies());
        Ok(Response::new(
            totp::confirm(self, &caller, request.into_inner(), &client).await?,
        ))
    }

    async fn disable_totp(&self, request: Request<pb::DisableTotpRequest>) -> Reply<pb::DisableTotpResponse> {
        let caller = principal(&request)?.user()?.clone();
        let client = client_info(&request, self.trusted_proxies());
        Ok(Response::new(
            totp::disable(self, &caller, request.into_inner(), &client).await?,
        ))
    }

    async fn request_password_reset(
        &self,
        request: Request<pb::RequestPasswordResetRequest>,
    ) -> Reply<pb::RequestPasswordResetResponse> {
        let client = client_info(&request, self.trusted_proxies());
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
        let client = client_info(&request, self.trusted_proxies());
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

/// Who is on the other end of a call: its address (named by a trusted
/// proxy's `x-forwarded-for` when it came through one) and user agent.
fn client_info<T>(request: &Request<T>, trusted_proxies: &[IpAddr]) -> ClientInfo {
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

fn user_pb(user: &UserRow) -> pb::User {
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
