//! Passwords: changing one, and recovering an account by a reset token
//! mailed to its owner.

use chrono::Utc;
use diesel_async::AsyncConnection as _;
use keel::events::v1::{PasswordResetRequested, event::Payload};
use keel_platform::{
    Error, auth::principal::UserPrincipal, events::EventType, events::outbox, proto::timestamp, serve::audit,
};

use super::{
    Auth, ClientInfo, RESET_TOKEN_TTL, SOURCE, credentials_changed,
    throttle::{LoginSubjects, address_key},
};
use crate::{
    domain::{Email, OpaqueToken, Password},
    password::Verdict,
    store::{
        one_time_tokens::{self, TokenPurpose},
        sessions, users,
    },
};

impl Auth {
    /// Replaces the caller's password, `current` being checked as at login
    /// (and throttled alike), and ends every other session of theirs.
    /// Returns how many sessions ended.
    pub async fn change_password(
        &self,
        caller: &UserPrincipal,
        current: &Password,
        new: &Password,
        client: &ClientInfo,
    ) -> Result<usize, Error> {
        let mut conn = self.pool.get().await?;
        let user = users::find(&mut conn, caller.user_id)
            .await?
            .ok_or_else(|| Error::not_found("user"))?;
        if user.disabled {
            return Err(Error::unauthenticated("USER_DISABLED", "this account is disabled"));
        }
        let subjects = LoginSubjects::new(&user.email, client.address);
        // Counts as a failure until the password checks out (as at login).
        self.admit_login(&mut conn, &subjects).await?;
        drop(conn);
        if self.hasher.verify(current, Some(&user.password_hash)).await? == Verdict::Invalid {
            return Err(Error::permission_denied(
                "WRONG_PASSWORD",
                "current_password is not the current password",
            ));
        }
        let password_hash = self.hasher.hash(new).await?;
        let mut conn = self.pool.get().await?;
        self.login_succeeded(&mut conn, &subjects).await?;
        let ended = conn
            .transaction::<_, Error, _>(async |conn| {
                // Only over the password just checked: a concurrent change wins.
                if !users::upgrade_password_hash(conn, user.id, &user.password_hash, &password_hash).await? {
                    return Err(credentials_changed());
                }
                Ok(sessions::revoke_all_of_user(conn, user.id, Some(caller.session_id), "password_changed").await?)
            })
            .await?;
        audit::revoked(user.id, None, "password_changed", ended);
        Ok(ended)
    }

    /// Sends a reset token to `email` (through the outbox) if it is a
    /// user's who is not disabled. The outcome is the same either way, so
    /// nobody learns who is registered; calls per email and per client
    /// address are limited.
    pub async fn request_password_reset(&self, email: &Email, client: &ClientInfo) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        // Per email whether or not it is registered, so the limit reveals nothing;
        // it caps the mail one inbox can be sent.
        let limits = self.call_limits;
        self.limit_calls(
            &mut conn,
            &[
                (format!("reset:email:{}", email.as_str()), limits.reset_per_email),
                (
                    format!("reset:address:{}", address_key(client.address)),
                    limits.reset_per_address,
                ),
            ],
        )
        .await?;
        let user = users::find_by_email(&mut conn, email.as_str()).await?;
        if let Some(user) = user.filter(|u| !u.disabled) {
            let token = OpaqueToken::generate()?;
            let expires = Utc::now() + RESET_TOKEN_TTL;
            let sealed_token = self.seal_token(EventType::PasswordResetRequested, user.id, &token)?;
            conn.transaction::<_, Error, _>(async |conn| {
                one_time_tokens::expire_all(conn, user.id, TokenPurpose::PasswordReset).await?;
                one_time_tokens::insert(conn, &token.hash(), user.id, TokenPurpose::PasswordReset, expires).await?;
                outbox::enqueue(
                    conn,
                    SOURCE,
                    Payload::PasswordResetRequested(PasswordResetRequested {
                        user_id: user.id.to_string(),
                        email: user.email.clone(),
                        expire_time: Some(timestamp(expires)),
                        sealed_token,
                    }),
                )
                .await?;
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Uses a reset token: its user's password becomes `password`, every
    /// session of theirs ends and their failed logins are forgotten.
    pub async fn reset_password(&self, token: &OpaqueToken, password: &Password) -> Result<(), Error> {
        let invalid_token = || Error::unauthenticated("INVALID_TOKEN", "the reset token is unknown, used or expired");
        let hash = token.hash();
        let mut conn = self.pool.get().await?;
        // Hash only for a live token, outside the transaction.
        one_time_tokens::peek(&mut conn, &hash, TokenPurpose::PasswordReset)
            .await?
            .ok_or_else(invalid_token)?;
        // No connection is held while hashing.
        drop(conn);
        let password_hash = self.hasher.hash(password).await?;
        let mut conn = self.pool.get().await?;
        let (user_id, ended) = conn
            .transaction::<_, Error, _>(async |conn| {
                let user_id = one_time_tokens::consume(conn, &hash, TokenPurpose::PasswordReset)
                    .await?
                    .ok_or_else(invalid_token)?;
                let user = users::find(conn, user_id)
                    .await?
                    .ok_or_else(|| Error::not_found("user"))?;
                users::set_password_hash(conn, user_id, &password_hash).await?;
                let ended = sessions::revoke_all_of_user(conn, user_id, None, "password_reset").await?;
                // Whoever guessed at the old password, the owner is back in charge:
                // their failures no longer hold the account back.
                Auth::clear_login_failures(conn, &user.email).await?;
                Ok((user_id, ended))
            })
            .await?;
        audit::revoked(user_id, None, "password_reset", ended);
        Ok(())
    }
}
