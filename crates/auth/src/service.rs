//! The `keel.auth.v1.AuthService` implementation: proto in, domain types,
//! store calls, proto out; every error leaves as a `Status` through
//! [`keel_platform::Error`].

use std::{net::IpAddr, sync::Arc, time::Duration as StdDuration};

use chrono::{DateTime, Duration, Utc};
use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use keel::{
    auth::v1::{self as pb, auth_service_server::AuthService},
    events::v1::{EmailVerificationRequested, PasswordResetRequested, UserRegistered, event::Payload},
};
use keel_platform::{
    Error, Role,
    client_address::{FORWARDED_FOR, client_address},
    db::Pool,
    error::FieldViolation,
    outbox, paging,
    principal::{UserPrincipal, principal},
    proto::timestamp,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    clients::ServiceClients,
    domain::{Email, OpaqueToken, Password, Roles},
    keys::KeyRing,
    password::{Hasher, Verdict},
    store::{self, InsertUserError, NewSession, NewUser, SessionRow, TokenPurpose, UserRow},
};

/// How long a refresh token (and an idle session) lives.
pub const REFRESH_TOKEN_TTL: Duration = Duration::days(30);
/// How long a password reset token lives.
pub const RESET_TOKEN_TTL: Duration = Duration::hours(1);
/// How long an email verification token lives.
pub const VERIFICATION_TOKEN_TTL: Duration = Duration::days(7);
/// The event source name of auth.
pub const SOURCE: &str = "auth";

/// When repeated failed logins lock an account or a client address.
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    /// Failures allowed within the window; the next attempt is refused.
    pub max_failures: i64,
    /// The sliding window.
    pub window: Duration,
}

/// The auth service: everything its calls need.
#[derive(Clone)]
pub struct Auth {
    pub(crate) pool: Pool,
    pub(crate) hasher: Hasher,
    pub(crate) keys: KeyRing,
    pub(crate) clients: Arc<ServiceClients>,
    pub(crate) throttle: Throttle,
    /// Peers whose `x-forwarded-for` is believed.
    pub(crate) trusted_proxies: Arc<[IpAddr]>,
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl AuthService for Auth {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Reply<pb::RegisterResponse> {
        let user = self.do_register(request.into_inner()).await?;
        Ok(Response::new(pb::RegisterResponse { user: Some(user) }))
    }

    async fn login(&self, request: Request<pb::LoginRequest>) -> Reply<pb::LoginResponse> {
        let client = ClientInfo::of(&request, &self.trusted_proxies);
        let (user, tokens) = self.do_login(request.into_inner(), &client).await?;
        Ok(Response::new(pb::LoginResponse {
            user: Some(user),
            tokens: Some(tokens),
        }))
    }

    async fn refresh(&self, request: Request<pb::RefreshRequest>) -> Reply<pb::RefreshResponse> {
        let tokens = self.do_refresh(&request.into_inner().refresh_token).await?;
        Ok(Response::new(pb::RefreshResponse { tokens: Some(tokens) }))
    }

    async fn logout(&self, request: Request<pb::LogoutRequest>) -> Reply<pb::LogoutResponse> {
        let token = OpaqueToken::parse("refresh_token", &request.into_inner().refresh_token).map_err(invalid)?;
        let mut conn = self.pool.get().await.map_err(Error::from)?;
        if let Some((_, session)) = store::lock_refresh_token(&mut conn, &token.hash())
            .await
            .map_err(Error::from)?
        {
            store::revoke_session(&mut conn, session.id, "logout")
                .await
                .map_err(Error::from)?;
        }
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn list_sessions(&self, request: Request<pb::ListSessionsRequest>) -> Reply<pb::ListSessionsResponse> {
        let caller = principal(&request)?.user()?.clone();
        let request = request.into_inner();
        let limit = paging::page_size(request.page_size)?;
        let before = paging::decode_token(&request.page_token)?;
        let mut conn = self.pool.get().await.map_err(Error::from)?;
        let rows = store::active_sessions(&mut conn, caller.user_id, before, limit + 1)
            .await
            .map_err(Error::from)?;
        let more = rows.len() as i64 > limit;
        let page: Vec<SessionRow> = rows.into_iter().take(limit as usize).collect();
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => paging::encode_token(last.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: page.iter().map(|s| session_pb(s, caller.session_id)).collect(),
            next_page_token,
        }))
    }

    async fn revoke_session(&self, request: Request<pb::RevokeSessionRequest>) -> Reply<pb::RevokeSessionResponse> {
        let caller = principal(&request)?.user()?.clone();
        let session_id = parse_id("session_id", &request.into_inner().session_id)?;
        let mut conn = self.pool.get().await.map_err(Error::from)?;
        match store::find_session(&mut conn, session_id).await.map_err(Error::from)? {
            // Another user's session is reported exactly like a missing one.
            Some(session) if session.user_id == caller.user_id => {
                store::revoke_session(&mut conn, session.id, "revoked_by_user")
                    .await
                    .map_err(Error::from)?;
                Ok(Response::new(pb::RevokeSessionResponse {}))
            }
            _ => Err(Error::not_found("session").into()),
        }
    }

    async fn change_password(&self, request: Request<pb::ChangePasswordRequest>) -> Reply<pb::ChangePasswordResponse> {
        let caller = principal(&request)?.user()?.clone();
        let ended = self.do_change_password(&caller, request.into_inner()).await?;
        Ok(Response::new(pb::ChangePasswordResponse {
            ended_session_count: i32::try_from(ended).unwrap_or(i32::MAX),
        }))
    }

    async fn request_password_reset(
        &self,
        request: Request<pb::RequestPasswordResetRequest>,
    ) -> Reply<pb::RequestPasswordResetResponse> {
        let email = Email::parse(&request.into_inner().email).map_err(invalid)?;
        let mut conn = self.pool.get().await.map_err(Error::from)?;
        let user = store::find_user_by_email(&mut conn, email.as_str())
            .await
            .map_err(Error::from)?;
        // The answer is the same either way: nobody learns who is registered.
        if let Some(user) = user.filter(|u| !u.disabled) {
            let token = OpaqueToken::generate().map_err(Error::from)?;
            let expires = Utc::now() + RESET_TOKEN_TTL;
            conn.transaction::<_, Error, _>(async |conn| {
                store::expire_one_time_tokens(conn, user.id, TokenPurpose::PasswordReset).await?;
                store::insert_one_time_token(conn, &token.hash(), user.id, TokenPurpose::PasswordReset, expires)
                    .await?;
                outbox::enqueue(
                    conn,
                    SOURCE,
                    Payload::PasswordResetRequested(PasswordResetRequested {
                        user_id: user.id.to_string(),
                        email: user.email.clone(),
                        token: token.expose().to_owned(),
                        expire_time: Some(timestamp(expires)),
                    }),
                )
                .await?;
                Ok(())
            })
            .await?;
        }
        Ok(Response::new(pb::RequestPasswordResetResponse {}))
    }

    async fn reset_password(&self, request: Request<pb::ResetPasswordRequest>) -> Reply<pb::ResetPasswordResponse> {
        let request = request.into_inner();
        let (token, password) = collect(
            OpaqueToken::parse("token", &request.token),
            Password::parse("new_password", request.new_password),
        )?;
        let invalid_token = || Error::invalid_argument("INVALID_TOKEN", "the reset token is unknown, used or expired");
        let hash = token.hash();
        let mut conn = self.pool.get().await.map_err(Error::from)?;
        // Hash only for a live token, outside the transaction.
        store::peek_one_time_token(&mut conn, &hash, TokenPurpose::PasswordReset)
            .await
            .map_err(Error::from)?
            .ok_or_else(invalid_token)?;
        // No connection is held while hashing.
        drop(conn);
        let password_hash = self.hasher.hash(&password).await.map_err(Error::from)?;
        let mut conn = self.pool.get().await.map_err(Error::from)?;
        conn.transaction::<_, Error, _>(async |conn| {
            let user_id = store::use_one_time_token(conn, &hash, TokenPurpose::PasswordReset)
                .await?
                .ok_or_else(invalid_token)?;
            store::set_password_hash(conn, user_id, &password_hash).await?;
            store::revoke_user_sessions(conn, user_id, None, "password_reset").await?;
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::ResetPasswordResponse {}))
    }

    async fn verify_email(&self, request: Request<pb::VerifyEmailRequest>) -> Reply<pb::VerifyEmailResponse> {
        let token = OpaqueToken::parse("token", &request.into_inner().token).map_err(invalid)?;
        let mut conn = self.pool.get().await.map_err(Error::from)?;
        let user = conn
            .transaction::<_, Error, _>(async |conn| {
                let user_id = store::use_one_time_token(conn, &token.hash(), TokenPurpose::EmailVerification)
                    .await?
                    .ok_or_else(|| {
                        Error::invalid_argument("INVALID_TOKEN", "the verification token is unknown, used or expired")
                    })?;
                store::mark_email_verified(conn, user_id)
                    .await?
                    .ok_or_else(|| Error::not_found("user"))
            })
            .await?;
        Ok(Response::new(pb::VerifyEmailResponse {
            user: Some(user_pb(&user)),
        }))
    }

    async fn get_jwks(&self, _request: Request<pb::GetJwksRequest>) -> Reply<pb::GetJwksResponse> {
        Ok(Response::new(pb::GetJwksResponse {
            keys: self.keys.jwks().await,
        }))
    }

    async fn issue_service_token(
        &self,
        request: Request<pb::IssueServiceTokenRequest>,
    ) -> Reply<pb::IssueServiceTokenResponse> {
        let request = request.into_inner();
        let client = self
            .clients
            .authenticate(&request.client_id, &request.client_secret)
            .ok_or_else(|| Error::unauthenticated("INVALID_CLIENT", "unknown client id or wrong secret"))?;
        let scopes = client.grant(&request.scopes).map_err(|scope| {
            Error::permission_denied(
                "SCOPE_NOT_ALLOWED",
                format!("client {} may not have scope {scope}", client.id),
            )
        })?;
        let (token, expires) = self
            .keys
            .service_token(&client.id, &scopes)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::IssueServiceTokenResponse {
            access_token: token,
            expire_time: Some(timestamp(expires)),
            scopes,
        }))
    }

    async fn set_user_roles(&self, request: Request<pb::SetUserRolesRequest>) -> Reply<pb::SetUserRolesResponse> {
        principal(&request)?.admin()?;
        let request = request.into_inner();
        let user_id = parse_id("user_id", &request.user_id)?;
        let roles = request
            .roles
            .iter()
            .map(|r| match pb::Role::try_from(*r) {
                Ok(pb::Role::User) => Ok(Role::User),
                Ok(pb::Role::Admin) => Ok(Role::Admin),
                _ => Err(FieldViolation {
                    field: "roles".into(),
                    description: format!("{r} is not a role"),
                }),
            })
            .collect::<Result<Vec<_>, _>>()
            .and_then(Roles::new)
            .map_err(invalid)?;
        let mut conn = self.pool.get().await.map_err(Error::from)?;
        let user = store::set_roles(&mut conn, user_id, roles.names())
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::not_found("user"))?;
        Ok(Response::new(pb::SetUserRolesResponse {
            user: Some(user_pb(&user)),
        }))
    }

    async fn disable_user(&self, request: Request<pb::DisableUserRequest>) -> Reply<pb::DisableUserResponse> {
        let admin = principal(&request)?.admin()?.clone();
        let user_id = parse_id("user_id", &request.into_inner().user_id)?;
        if user_id == admin.user_id {
            return Err(Error::failed_precondition(
                "CANNOT_DISABLE_SELF",
                "an administrator cannot disable themselves",
            )
            .into());
        }
        let mut conn = self.pool.get().await.map_err(Error::from)?;
        let user = conn
            .transaction::<_, Error, _>(async |conn| {
                let user = store::disable_user(conn, user_id)
                    .await?
                    .ok_or_else(|| Error::not_found("user"))?;
                store::revoke_user_sessions(conn, user_id, None, "user_disabled").await?;
                Ok(user)
            })
            .await?;
        Ok(Response::new(pb::DisableUserResponse {
            user: Some(user_pb(&user)),
        }))
    }
}

impl Auth {
    async fn do_register(&self, request: pb::RegisterRequest) -> Result<pb::User, Error> {
        let (email, password) = collect(
            Email::parse(&request.email),
            Password::parse("password", request.password),
        )?;
        let request_id = match request.request_id.trim() {
            "" => None,
            id if id.len() > 128 => return Err(Error::invalid_field("request_id", "must be at most 128 bytes")),
            id => Some(id.to_owned()),
        };
        let roles = Roles::new(vec![Role::User]).map_err(invalid)?;
        let user = self.create_user(&email, &password, &roles, request_id).await?;
        Ok(user_pb(&user))
    }

    /// Creates a user (announcing it in the outbox), or returns the one an
    /// earlier call with the same `request_id` created.
    pub async fn create_user(
        &self,
        email: &Email,
        password: &Password,
        roles: &Roles,
        request_id: Option<String>,
    ) -> Result<UserRow, Error> {
        let mut conn = self.pool.get().await?;
        if let Some(request_id) = &request_id
            && let Some(user) = store::find_user_by_register_request(&mut conn, request_id).await?
        {
            return replay(user, email);
        }
        if let Some(existing) = store::find_user_by_email(&mut conn, email.as_str()).await? {
            // A concurrent retry with the same key may have committed since
            // the lookup above.
            return match (&request_id, &existing.register_request_id) {
                (Some(ours), Some(theirs)) if ours == theirs => Ok(existing),
                _ => Err(email_taken()),
            };
        }

        // No connection is held while hashing.
        drop(conn);
        let password_hash = self.hasher.hash(password).await?;
        let mut conn = self.pool.get().await?;
        let verification = OpaqueToken::generate()?;
        let verification_expires = Utc::now() + VERIFICATION_TOKEN_TTL;
        let inserted = conn
            .transaction::<_, RegisterFailure, _>(async |conn| {
                let user = store::insert_user(
                    conn,
                    NewUser {
                        id: Uuid::now_v7(),
                        email: email.as_str(),
                        password_hash: &password_hash,
                        roles: roles.names(),
                        register_request_id: request_id.as_deref(),
                    },
                )
                .await
                .map_err(RegisterFailure::Insert)?;
                store::insert_one_time_token(
                    conn,
                    &verification.hash(),
                    user.id,
                    TokenPurpose::EmailVerification,
                    verification_expires,
                )
                .await?;
                let registered = Payload::UserRegistered(UserRegistered {
                    user_id: user.id.to_string(),
                    email: user.email.clone(),
                });
                let verify = Payload::EmailVerificationRequested(EmailVerificationRequested {
                    user_id: user.id.to_string(),
                    email: user.email.clone(),
                    token: verification.expose().to_owned(),
                    expire_time: Some(timestamp(verification_expires)),
                });
                for payload in [registered, verify] {
                    outbox::enqueue(conn, SOURCE, payload)
                        .await
                        .map_err(RegisterFailure::Other)?;
                }
                Ok(user)
            })
            .await;
        match inserted {
            Ok(user) => {
                tracing::info!(user_id = %user.id, "user registered");
                Ok(user)
            }
            // A concurrent retry with the same key may have won the race:
            // Postgres reports whichever unique index it checks first, and
            // the email's comes before the request id's.
            Err(RegisterFailure::Insert(InsertUserError::EmailTaken)) => match &request_id {
                Some(request_id) => match store::find_user_by_register_request(&mut conn, request_id).await? {
                    Some(user) => replay(user, email),
                    None => Err(email_taken()),
                },
                None => Err(email_taken()),
            },
            // A concurrent retry with the same key won the race.
            Err(RegisterFailure::Insert(InsertUserError::RequestIdTaken)) => {
                let request_id = request_id.unwrap_or_default();
                let user = store::find_user_by_register_request(&mut conn, &request_id)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("request id {request_id} vanished"))?;
                replay(user, email)
            }
            Err(RegisterFailure::Insert(InsertUserError::Database(err))) => Err(err.into()),
            Err(RegisterFailure::Other(err)) => Err(err),
        }
    }

    async fn do_login(
        &self,
        request: pb::LoginRequest,
        client: &ClientInfo,
    ) -> Result<(pb::User, pb::TokenPair), Error> {
        let (email, password) = collect(
            Email::parse(&request.email),
            Password::for_check("password", request.password),
        )?;
        let account_subject = format!("account:{}", email.as_str());
        let address_subject = client.address.map(|ip| format!("address:{ip}"));
        let subjects: Vec<&str> = std::iter::once(account_subject.as_str())
            .chain(address_subject.as_deref())
            .collect();

        let (attempt, user) = {
            let mut conn = self.pool.get().await?;
            // The attempt counts as a failure until it succeeds, so guesses sent
            // at once cannot all pass the check while their hashes run.
            let attempt = self.admit_attempt(&mut conn, &subjects).await?;
            let user = store::find_user_by_email(&mut conn, email.as_str()).await?;
            (attempt, user)
            // The connection goes back to the pool for the hashing.
        };
        // Unknown emails are checked against a dummy hash: the same cost, the
        // same answer.
        let verdict = self
            .hasher
            .verify(&password, user.as_ref().map(|u| u.password_hash.as_str()))
            .await?;
        let (user, needs_rehash) = match (verdict, user) {
            (Verdict::Valid { needs_rehash }, Some(user)) if !user.disabled => (user, needs_rehash),
            (Verdict::Valid { .. }, Some(_)) => {
                return Err(Error::unauthenticated("USER_DISABLED", "this account is disabled"));
            }
            _ => {
                let mut conn = self.pool.get().await?;
                store::prune_failures(&mut conn, &subjects, Utc::now() - self.throttle.window).await?;
                return Err(invalid_credentials());
            }
        };
        let upgraded = match needs_rehash {
            true => Some(self.hasher.hash(&password).await?),
            false => None,
        };

        let mut conn = self.pool.get().await?;
        let mut verified_hash = user.password_hash.clone();
        if let Some(upgraded) = upgraded {
            if !store::upgrade_password_hash(&mut conn, user.id, &user.password_hash, &upgraded).await? {
                return Err(credentials_changed());
            }
            tracing::info!(user_id = %user.id, "password hash upgraded to the current cost");
            verified_hash = upgraded;
        }
        store::forget_failures(&mut conn, &attempt.ids).await?;
        if attempt.had_failures {
            store::clear_failures(&mut conn, &account_subject).await?;
        }
        let tokens = self.start_session(&mut conn, &user, &verified_hash, client).await?;
        Ok((user_pb(&user), tokens))
    }

    /// Records an attempt for `subjects`, or refuses it with
    /// RESOURCE_EXHAUSTED (and a RetryInfo delay) when any of them already
    /// has too many recent failures.
    async fn admit_attempt(&self, conn: &mut AsyncPgConnection, subjects: &[&str]) -> Result<Attempt, Error> {
        let since = Utc::now() - self.throttle.window;
        let recorded = store::record_attempt(conn, subjects, since).await?;
        let ids: Vec<i64> = recorded.iter().map(|r| r.id).collect();
        if let Some(limited) = recorded.iter().find(|r| r.prior_failures >= self.throttle.max_failures) {
            // A refused attempt is no attempt: it does not extend the lock.
            store::forget_failures(conn, &ids).await?;
            let free_at = limited.oldest.unwrap_or_else(Utc::now) + self.throttle.window;
            let wait = (free_at - Utc::now()).to_std().unwrap_or(StdDuration::from_secs(1));
            return Err(Error::too_many(
                "TOO_MANY_ATTEMPTS",
                format!("too many failed logins; retry in {} s", wait.as_secs().max(1)),
                wait,
            ));
        }
        Ok(Attempt {
            had_failures: recorded.iter().any(|r| r.prior_failures > 0),
            ids,
        })
    }

    /// Starts a session for `user`, provided their password hash still is
    /// `verified_hash` and they are not disabled.
    async fn start_session(
        &self,
        conn: &mut AsyncPgConnection,
        user: &UserRow,
        verified_hash: &str,
        client: &ClientInfo,
    ) -> Result<pb::TokenPair, Error> {
        let session_id = Uuid::now_v7();
        let refresh = OpaqueToken::generate()?;
        let refresh_expires = Utc::now() + REFRESH_TOKEN_TTL;
        let address = client.address.map(|ip| ip.to_string()).unwrap_or_default();
        let started = store::insert_session(
            conn,
            NewSession {
                id: session_id,
                user_id: user.id,
                expires_at: refresh_expires,
                user_agent: &client.user_agent,
                client_address: &address,
            },
            verified_hash,
            &refresh.hash(),
        )
        .await?;
        if !started {
            return Err(credentials_changed());
        }
        let roles = Roles::from_names(&user.roles);
        let (access, access_expires) = self.keys.user_token(user.id, session_id, &roles).await?;
        Ok(token_pair(
            access,
            access_expires,
            &refresh,
            refresh_expires,
            session_id,
        ))
    }

    async fn do_refresh(&self, raw: &str) -> Result<pb::TokenPair, Error> {
        let presented = OpaqueToken::parse("refresh_token", raw).map_err(invalid)?;
        let next = OpaqueToken::generate()?;
        let next_expires = Utc::now() + REFRESH_TOKEN_TTL;
        let mut conn = self.pool.get().await?;
        let outcome = conn
            .transaction::<_, Error, _>(async |conn| {
                let hash = presented.hash();
                let Some((token, session)) = store::lock_refresh_token(conn, &hash).await? else {
                    return Ok(Refreshed::Refused(Error::unauthenticated(
                        "INVALID_REFRESH_TOKEN",
                        "the refresh token is not valid",
                    )));
                };
                if token.spent_at.is_some() {
                    // Someone holds a copy of a spent token: end the family.
                    let revoked = store::revoke_session(conn, session.id, "refresh_token_reused").await?;
                    if revoked {
                        tracing::warn!(session_id = %session.id, user_id = %session.user_id, "refresh token reuse: session revoked");
                    }
                    return Ok(Refreshed::Refused(Error::unauthenticated(
                        "REFRESH_TOKEN_REUSED",
                        "the refresh token was already used; the session has been ended",
                    )));
                }
                let now = Utc::now();
                if session.revoked_at.is_some() || token.expires_at <= now || session.expires_at <= now {
                    return Ok(Refreshed::Refused(Error::unauthenticated(
                        "SESSION_ENDED",
                        "the session has ended; log in again",
                    )));
                }
                let user = store::find_user(conn, session.user_id)
                    .await?
                    .ok_or_else(|| Error::not_found("user"))?;
                if user.disabled {
                    store::revoke_session(conn, session.id, "user_disabled").await?;
                    return Ok(Refreshed::Refused(Error::unauthenticated("USER_DISABLED", "this account is disabled")));
                }
                store::spend_refresh_token(conn, &hash).await?;
                store::insert_refresh_token(conn, &next.hash(), session.id, next_expires).await?;
                store::extend_session(conn, session.id, next_expires).await?;
                Ok(Refreshed::Granted(user, session.id))
            })
            .await?;
        // Refusals commit first: a reuse must revoke the family even though
        // the caller gets an error.
        let (user, session_id) = match outcome {
            Refreshed::Granted(user, session_id) => (user, session_id),
            Refreshed::Refused(err) => return Err(err),
        };
        let roles = Roles::from_names(&user.roles);
        let (access, access_expires) = self.keys.user_token(user.id, session_id, &roles).await?;
        Ok(token_pair(access, access_expires, &next, next_expires, session_id))
    }

    async fn do_change_password(
        &self,
        caller: &UserPrincipal,
        request: pb::ChangePasswordRequest,
    ) -> Result<usize, Error> {
        let (current, new) = collect(
            Password::for_check("current_password", request.current_password),
            Password::parse("new_password", request.new_password),
        )?;
        let mut conn = self.pool.get().await?;
        let user = store::find_user(&mut conn, caller.user_id)
            .await?
            .ok_or_else(|| Error::not_found("user"))?;
        if user.disabled {
            return Err(Error::unauthenticated("USER_DISABLED", "this account is disabled"));
        }
        let account_subject = format!("account:{}", user.email);
        // Counts as a failure until the password checks out (see do_login).
        let attempt = self.admit_attempt(&mut conn, &[&account_subject]).await?;
        drop(conn);
        if self.hasher.verify(&current, Some(&user.password_hash)).await? == Verdict::Invalid {
            return Err(Error::invalid_field("current_password", "is not the current password"));
        }
        let password_hash = self.hasher.hash(&new).await?;
        let mut conn = self.pool.get().await?;
        store::forget_failures(&mut conn, &attempt.ids).await?;
        let ended = conn
            .transaction::<_, Error, _>(async |conn| {
                // Only over the password just checked: a concurrent change wins.
                if !store::upgrade_password_hash(conn, user.id, &user.password_hash, &password_hash).await? {
                    return Err(credentials_changed());
                }
                Ok(store::revoke_user_sessions(conn, user.id, Some(caller.session_id), "password_changed").await?)
            })
            .await?;
        Ok(ended)
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("throttle", &self.throttle)
            .finish_non_exhaustive()
    }
}

/// A login attempt admitted past the throttle.
struct Attempt {
    /// Its failure rows, deleted if it succeeds.
    ids: Vec<i64>,
    /// Whether the account or address had failed before.
    had_failures: bool,
}

/// Why the registration transaction rolled back.
enum RegisterFailure {
    Insert(InsertUserError),
    Other(Error),
}

impl From<diesel::result::Error> for RegisterFailure {
    fn from(err: diesel::result::Error) -> Self {
        RegisterFailure::Other(err.into())
    }
}

enum Refreshed {
    Granted(UserRow, Uuid),
    Refused(Error),
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
        ClientInfo {
            address: request.remote_addr().map(|peer| {
                let forwarded = request
                    .metadata()
                    .get_all(FORWARDED_FOR)
                    .iter()
                    .filter_map(|v| v.to_str().ok());
                client_address(peer.ip(), forwarded, trusted_proxies)
            }),
            user_agent,
        }
    }
}

fn replay(user: UserRow, email: &Email) -> Result<UserRow, Error> {
    if user.email == email.as_str() {
        Ok(user)
    } else {
        Err(Error::failed_precondition(
            "REQUEST_ID_REUSED",
            "this request_id was used for a different registration",
        ))
    }
}

fn email_taken() -> Error {
    Error::already_exists("EMAIL_TAKEN", "a user with this email is already registered")
}

fn credentials_changed() -> Error {
    Error::unauthenticated(
        "CREDENTIALS_CHANGED",
        "the password or the account changed during sign-in; log in again",
    )
}

fn invalid_credentials() -> Error {
    Error::unauthenticated("INVALID_CREDENTIALS", "the email or password is wrong")
}

fn invalid(violation: FieldViolation) -> Error {
    Error::invalid_fields(vec![violation])
}

/// Both values, or INVALID_ARGUMENT naming every bad field.
fn collect<A, B>(a: Result<A, FieldViolation>, b: Result<B, FieldViolation>) -> Result<(A, B), Error> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (a, b) => Err(Error::invalid_fields(a.err().into_iter().chain(b.err()).collect())),
    }
}

fn parse_id(field: &str, raw: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(raw).map_err(|_| Error::invalid_field(field, "must be a UUID"))
}

fn token_pair(
    access: String,
    access_expires: DateTime<Utc>,
    refresh: &OpaqueToken,
    refresh_expires: DateTime<Utc>,
    session_id: Uuid,
) -> pb::TokenPair {
    pb::TokenPair {
        access_token: access,
        access_token_expire_time: Some(timestamp(access_expires)),
        refresh_token: refresh.expose().to_owned(),
        refresh_token_expire_time: Some(timestamp(refresh_expires)),
        token_type: "Bearer".into(),
        session_id: session_id.to_string(),
    }
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

fn session_pb(session: &SessionRow, current: Uuid) -> pb::Session {
    pb::Session {
        id: session.id.to_string(),
        create_time: Some(timestamp(session.created_at)),
        last_use_time: Some(timestamp(session.last_used_at)),
        expire_time: Some(timestamp(session.expires_at)),
        user_agent: session.user_agent.clone(),
        client_address: session.client_address.clone(),
        current: session.id == current,
    }
}
