//! Login and Refresh: exchanging credentials or a refresh token for a token
//! pair, behind the failed-login throttle.

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use keel::auth::v1 as pb;
use keel_platform::{
    Error,
    proto::timestamp,
    serve::audit,
    serve::rpc::{collect, invalid},
};
use uuid::Uuid;

use super::{Auth, ClientInfo, credentials_changed, throttle::LoginSubjects, user_pb};
use crate::{
    domain::{Email, OpaqueToken, Password, Roles},
    password::Verdict,
    store::{self, NewSession, UserRow},
};

pub(super) async fn login(
    auth: &Auth,
    request: pb::LoginRequest,
    client: &ClientInfo,
) -> Result<pb::LoginResponse, Error> {
    let (email, password) = collect(
        Email::parse(&request.email),
        Password::for_check("password", request.password),
    )?;
    let subjects = LoginSubjects::new(email.as_str(), client.address);

    let user = {
        let mut conn = auth.pool.get().await?;
        let user = store::find_user_by_email(&mut conn, email.as_str()).await?;
        // A refusal's log names the account tried (never the email or
        // password), throttled attempts included.
        if let Some(user) = &user {
            audit::record_subject(&format_args!("user:{}", user.id));
        }
        // The attempt counts as a failure until it succeeds, so guesses sent
        // at once cannot all pass the check while their hashes run.
        auth.admit_login(&mut conn, &subjects).await?;
        user
        // The connection goes back to the pool for the hashing.
    };
    // Unknown emails are checked against a dummy hash: the same cost, the
    // same answer.
    let verdict = auth
        .hasher
        .verify(&password, user.as_ref().map(|u| u.password_hash.as_str()))
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
        true => Some(auth.hasher.hash(&password).await?),
        false => None,
    };

    let mut conn = auth.pool.get().await?;
    let mut verified_hash = user.password_hash.clone();
    if let Some(upgraded) = upgraded {
        if !store::upgrade_password_hash(&mut conn, user.id, &user.password_hash, &upgraded).await? {
            return Err(credentials_changed());
        }
        tracing::info!(user_id = %user.id, "password hash upgraded to the current cost");
        verified_hash = upgraded;
    }
    auth.login_succeeded(&mut conn, &subjects).await?;
    let tokens = auth.start_session(&mut conn, &user, &verified_hash, client).await?;
    Ok(pb::LoginResponse {
        user: Some(user_pb(&user)),
        tokens: Some(tokens),
    })
}

pub(super) async fn refresh(auth: &Auth, request: pb::RefreshRequest) -> Result<pb::RefreshResponse, Error> {
    let presented = OpaqueToken::parse("refresh_token", &request.refresh_token).map_err(invalid)?;
    let next = OpaqueToken::generate()?;
    let limits = auth.session_limits;
    let mut conn = auth.pool.get().await?;
    let outcome = conn
        .transaction::<_, Error, _>(async |conn| {
            let hash = presented.hash();
            let Some((token, session)) = store::lock_refresh_token(conn, &hash).await? else {
                return Ok(Refreshed::Refused(Error::unauthenticated(
                    "INVALID_REFRESH_TOKEN",
                    "the refresh token is not valid",
                )));
            };
            audit::record_subject(&format_args!("user:{} session:{}", session.user_id, session.id));
            if token.spent_at.is_some() {
                // Someone holds a copy of a spent token: end the family.
                if store::revoke_session(conn, session.id, "refresh_token_reused").await? {
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
            let user = store::find_user(conn, session.user_id)
                .await?
                .ok_or_else(|| Error::not_found("user"))?;
            if user.disabled {
                if store::revoke_session(conn, session.id, "user_disabled").await? {
                    audit::revoked(session.user_id, Some(session.id), "user_disabled", 1);
                }
                return Ok(Refreshed::Refused(Error::unauthenticated(
                    "USER_DISABLED",
                    "this account is disabled",
                )));
            }
            let next_expires = limits.expiry(session.created_at, now);
            store::spend_refresh_token(conn, &hash).await?;
            store::insert_refresh_token(conn, &next.hash(), session.id, next_expires).await?;
            store::extend_session(conn, session.id, next_expires).await?;
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
    let (access, access_expires) = auth.keys.user_token(user.id, session_id, &roles).await?;
    Ok(pb::RefreshResponse {
        tokens: Some(token_pair(access, access_expires, &next, next_expires, session_id)),
    })
}

impl Auth {
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
        let now = Utc::now();
        let refresh_expires = self.session_limits.expiry(now, now);
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
}

enum Refreshed {
    Granted(UserRow, Uuid, DateTime<Utc>),
    Refused(Error),
}

fn invalid_credentials() -> Error {
    Error::unauthenticated("INVALID_CREDENTIALS", "the email or password is wrong")
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
