//! Login and Refresh: exchanging credentials or a refresh token for a token
//! pair, behind the failed-login throttle; and [`Auth::first_factor_passed`],
//! the step every sign-in takes once its first factor passed.

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use keel_platform::{Error, serve::audit};
use secrecy::SecretString;
use uuid::Uuid;

use super::{
    Auth, ClientInfo, credentials_changed,
    second_factor::{challenges::Challenge, metrics::Operation},
    throttle::LoginSubjects,
};
use crate::{
    domain::{Email, OpaqueToken, Password, Roles},
    password::Verdict,
    store::{
        second_factors,
        sessions::{self, NewSession},
        users::{self, UserRow},
    },
};

/// What a sign-in or a refresh hands the client: an access token and the
/// refresh token that renews it, for one session.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// The signed access token (a JWT).
    pub access_token: SecretString,
    /// When it expires.
    pub access_expires: DateTime<Utc>,
    /// The refresh token, single-use.
    pub refresh_token: OpaqueToken,
    /// When it (and the session, unless refreshed) expires.
    pub refresh_expires: DateTime<Utc>,
    /// The session both belong to.
    pub session_id: Uuid,
}

/// A successful login: who signed in, and their tokens.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The user.
    pub user: UserRow,
    /// The new session's tokens.
    pub tokens: Tokens,
}

/// Where a sign-in stands once its first factor passed.
#[derive(Debug, Clone)]
pub enum SignIn {
    /// Signed in: a session started.
    Complete(SignedIn),
    /// The user has a second factor: the session starts when the challenge
    /// is answered ([`Auth::verify_second_factor`]).
    Challenged(Challenge),
}

impl Auth {
    /// Checks `email` and `password` from `client` behind the failed-login
    /// throttle, then finishes the sign-in ([`Auth::first_factor_passed`]).
    pub async fn login(&self, email: &Email, password: &Password, client: &ClientInfo) -> Result<SignIn, Error> {
        let subjects = LoginSubjects::new(email.as_str(), client.address);

        let user = {
            let mut conn = self.pool.get().await?;
            let user = users::find_by_email(&mut conn, email.as_str()).await?;
            // A refusal's log names the account tried (never the email or
            // password), throttled attempts included.
            if let Some(user) = &user {
                audit::record_subject(&format_args!("user:{}", user.id));
            }
            // The attempt counts as a failure until it succeeds, so guesses sent
            // at once cannot all pass the check while their hashes run.
            self.admit_login(&mut conn, &subjects).await?;
            user
            // The connection goes back to the pool for the hashing.
        };
        // Unknown emails are checked against a dummy hash: the same cost, the
        // same answer.
        let verdict = self
            .hasher
            .verify(password, user.as_ref().map(|u| u.password_hash.as_str()))
            .await?;
        let (user, needs_rehash) = match (verdict, user) {
            (Verdict::Valid { needs_rehash }, Some(user)) if !user.disabled => (user, needs_rehash),
            (Verdict::Valid { .. }, Some(_)) => {
                return Err(Error::unauthenticated("USER_DISABLED", "this account is disabled"));
            }
            // The failure was counted at admission.
            _ => return Err(invalid_credentials()),
        };
        let upgraded = match needs_rehash {
            true => Some(self.hasher.hash(password).await?),
            false => None,
        };

        let mut conn = self.pool.get().await?;
        let mut user = user;
        if let Some(upgraded) = upgraded {
            if !users::upgrade_password_hash(&mut conn, user.id, &user.password_hash, &upgraded).await? {
                return Err(credentials_changed());
            }
            tracing::info!(user_id = %user.id, "password hash upgraded to the current cost");
            // The hash the session is bound to is the one now stored.
            user.password_hash = upgraded;
        }
        self.login_succeeded(&mut conn, &subjects).await?;
        drop(conn);
        self.first_factor_passed(user, client).await
    }

    /// Finishes a sign-in whose first factor passed (a password, a
    /// provider's word) for `user` from `client`: starts a session and issues
    /// its tokens, or, when the user has a second factor, stores a challenge
    /// for [`Auth::verify_second_factor`] and answers it instead. Every way
    /// of signing in ends here, so none skips the second factor.
    ///
    /// `user` is as read when the first factor passed: the session starts,
    /// now or when the challenge is answered, only while their password hash
    /// is still `user.password_hash` (a password changed or reset meanwhile
    /// voids the sign-in) and they are not disabled.
    pub async fn first_factor_passed(&self, user: UserRow, client: &ClientInfo) -> Result<SignIn, Error> {
        let mut conn = self.pool.get().await?;
        if second_factors::is_confirmed(&mut conn, user.id).await? {
            let challenge = self
                .start_challenge(&mut conn, &user, &user.password_hash, client)
                .await;
            self.second_factor_metrics.record(Operation::Challenge, &challenge);
            return Ok(SignIn::Challenged(challenge?));
        }
        let tokens = self
            .start_session(&mut conn, &user, &user.password_hash, client)
            .await?;
        Ok(SignIn::Complete(SignedIn { user, tokens }))
    }

    /// Spends `presented` for a new token pair of its session. A refresh
    /// token spent before ends its whole session (someone holds a copy).
    pub async fn refresh(&self, presented: &OpaqueToken) -> Result<Tokens, Error> {
        let next = OpaqueToken::generate()?;
        let limits = self.session_limits;
        let mut conn = self.pool.get().await?;
        let outcome = conn
            .transaction::<_, Error, _>(async |conn| {
                let hash = presented.hash();
                let Some((token, session)) = sessions::lock_refresh_token(conn, &hash).await? else {
                    return Ok(Refreshed::Refused(Error::unauthenticated(
                        "INVALID_REFRESH_TOKEN",
                        "the refresh token is not valid",
                    )));
                };
                audit::record_subject(&format_args!("user:{} session:{}", session.user_id, session.id));
                if token.spent_at.is_some() {
                    // Someone holds a copy of a spent token: end the family.
                    if sessions::revoke(conn, session.id, "refresh_token_reused").await? {
                        audit::revoked(session.user_id, Some(session.id), "refresh_token_reused", 1);
                    }
                    return Ok(Refreshed::Refused(Error::unauthenticated(
                        "REFRESH_TOKEN_REUSED",
                        "the refresh token was already used; the session has been ended",
                    )));
                }
                let now = Utc::now();
                // Judged by today's settings, so shortening them ends sessions
                // that are already too old or idle.
                if session.revoked_at.is_none() && now >= session.created_at + limits.max_lifetime {
                    return Ok(Refreshed::Refused(Error::unauthenticated(
                        "SESSION_EXPIRED",
                        "the session reached its maximum lifetime; log in again",
                    )));
                }
                if session.revoked_at.is_none() && now >= session.last_used_at + limits.idle_timeout {
                    return Ok(Refreshed::Refused(Error::unauthenticated(
                        "SESSION_IDLE",
                        "the session was not used for too long; log in again",
                    )));
                }
                if session.revoked_at.is_some() || token.expires_at <= now || session.expires_at <= now {
                    return Ok(Refreshed::Refused(Error::unauthenticated(
                        "SESSION_ENDED",
                        "the session has ended; log in again",
                    )));
                }
                let user = users::find(conn, session.user_id)
                    .await?
                    .ok_or_else(|| Error::not_found("user"))?;
                if user.disabled {
                    if sessions::revoke(conn, session.id, "user_disabled").await? {
                        audit::revoked(session.user_id, Some(session.id), "user_disabled", 1);
                    }
                    return Ok(Refreshed::Refused(Error::unauthenticated(
                        "USER_DISABLED",
                        "this account is disabled",
                    )));
                }
                let next_expires = limits.expiry(session.created_at, now);
                sessions::spend_refresh_token(conn, &hash).await?;
                sessions::insert_refresh_token(conn, &next.hash(), session.id, next_expires).await?;
                sessions::extend(conn, session.id, next_expires).await?;
                Ok(Refreshed::Granted(user, session.id, next_expires))
            })
            .await?;
        // Refusals commit first: a reuse must revoke the family even though
        // the caller gets an error.
        let (user, session_id, next_expires) = match outcome {
            Refreshed::Granted(user, session_id, next_expires) => (user, session_id, next_expires),
            Refreshed::Refused(err) => return Err(err),
        };
        let roles = Roles::from_names(&user.roles);
        let (access, access_expires) = self.keys.user_token(user.id, session_id, &roles).await?;
        Ok(Tokens {
            access_token: access.into(),
            access_expires,
            refresh_token: next,
            refresh_expires: next_expires,
            session_id,
        })
    }

    /// Starts a session for `user`, provided their password hash still is
    /// `verified_hash` and they are not disabled.
    pub(in crate::app) async fn start_session(
        &self,
        conn: &mut AsyncPgConnection,
        user: &UserRow,
        verified_hash: &str,
        client: &ClientInfo,
    ) -> Result<Tokens, Error> {
        let session_id = Uuid::now_v7();
        let refresh = OpaqueToken::generate()?;
        let now = Utc::now();
        let refresh_expires = self.session_limits.expiry(now, now);
        let address = client.address.map(|ip| ip.to_string()).unwrap_or_default();
        let started = sessions::insert(
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
        Ok(Tokens {
            access_token: access.into(),
            access_expires,
            refresh_token: refresh,
            refresh_expires,
            session_id,
        })
    }
}

enum Refreshed {
    Granted(UserRow, Uuid, DateTime<Utc>),
    Refused(Error),
}

fn invalid_credentials() -> Error {
    Error::unauthenticated("INVALID_CREDENTIALS", "the email or password is wrong")
}
