//! A user's own second factor: enrolling an authenticator, confirming it with
//! a first code (which hands out the recovery codes), removing it.

use diesel_async::AsyncConnection as _;
use keel_platform::{Error, auth::principal::UserPrincipal};
use secrecy::SecretString;
use uuid::Uuid;

use super::{Presenter, already_enrolled, changed, metrics::Operation, not_enrolled};
use crate::{
    app::{Auth, ClientInfo, throttle::LoginSubjects},
    domain::{Password, RECOVERY_CODE_COUNT, RecoveryCode, SecondFactor, TotpCode},
    password::Verdict,
    store::{
        second_factors::{self, NewFactor},
        users::{self, UserRow},
    },
    totp::TotpSecret,
};

/// A new authenticator's secret, to show its user once.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// The secret in base32, to type into an app.
    pub secret: SecretString,
    /// The `otpauth://` URI, for a QR code.
    pub uri: SecretString,
}

impl Auth {
    /// Gives the caller a new pending authenticator secret, replacing a
    /// pending one; refused when their second factor is confirmed.
    pub async fn enroll_totp(&self, caller: &UserPrincipal) -> Result<Enrollment, Error> {
        let enrolled = self.enroll(caller.user_id).await;
        self.second_factor_metrics.record(Operation::Enroll, &enrolled);
        enrolled
    }

    /// Confirms the caller's pending authenticator with a current `code`
    /// (throttled as passwords are); answers their recovery codes, which
    /// replace any they had.
    pub async fn confirm_totp(
        &self,
        caller: &UserPrincipal,
        code: &TotpCode,
        client: &ClientInfo,
    ) -> Result<Vec<RecoveryCode>, Error> {
        let confirmed = self.confirm(caller.user_id, code, client).await;
        self.second_factor_metrics.record(Operation::Confirm, &confirmed);
        confirmed
    }

    /// Removes the caller's second factor and recovery codes, given their
    /// `password` and a current code or a recovery code (each throttled as
    /// passwords are).
    pub async fn disable_totp(
        &self,
        caller: &UserPrincipal,
        password: &Password,
        proof: &SecondFactor,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        let disabled = self.disable(caller.user_id, password, proof, client).await;
        self.second_factor_metrics.record(Operation::Disable, &disabled);
        disabled
    }

    async fn enroll(&self, user_id: Uuid) -> Result<Enrollment, Error> {
        let mut conn = self.pool.get().await?;
        let user = active_user(users::find(&mut conn, user_id).await?)?;
        let secret = TotpSecret::generate()?;
        let uri = secret.uri(&self.totp_issuer, &user.email)?;
        let (stored, sealed_with) = secret.seal(user.id, self.key_encryption_key.as_ref())?;
        let factor = NewFactor {
            user_id: user.id,
            secret: &stored,
            sealed_with: sealed_with.as_deref(),
        };
        if !second_factors::save_pending(&mut conn, &factor).await? {
            return Err(already_enrolled(user.id));
        }
        changed(user.id, "enrollment_started");
        Ok(Enrollment {
            secret: secret.base32().into(),
            uri: uri.into(),
        })
    }

    async fn confirm(&self, user_id: Uuid, code: &TotpCode, client: &ClientInfo) -> Result<Vec<RecoveryCode>, Error> {
        let mut conn = self.pool.get().await?;
        match second_factors::find(&mut conn, user_id).await? {
            None => return Err(not_enrolled(user_id)),
            Some(factor) if factor.confirmed() => return Err(already_enrolled(user_id)),
            Some(_) => {}
        }
        let subjects = LoginSubjects::second_factor(user_id, client.address);
        // Counts as a failure until the code checks out (as a password does).
        self.admit_login(&mut conn, &subjects).await?;
        let codes = (0..RECOVERY_CODE_COUNT)
            .map(|_| RecoveryCode::generate())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let hashes: Vec<Vec<u8>> = codes.iter().map(|code| code.hash(user_id)).collect();
        conn.transaction::<_, Error, _>(async |conn| {
            let factor = second_factors::lock(conn, user_id)
                .await?
                .ok_or_else(|| not_enrolled(user_id))?;
            if factor.confirmed() {
                return Err(already_enrolled(user_id));
            }
            let step = self.check_code(&factor, code, Presenter::SignedIn)?;
            second_factors::confirm(conn, user_id, step).await?;
            second_factors::replace_recovery_codes(conn, user_id, &hashes).await?;
            Ok(())
        })
        .await?;
        self.login_succeeded(&mut conn, &subjects).await?;
        changed(user_id, "enabled");
        Ok(codes)
    }

    async fn disable(
        &self,
        user_id: Uuid,
        password: &Password,
        proof: &SecondFactor,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        let user = active_user(users::find(&mut conn, user_id).await?)?;
        let enabled = second_factors::find(&mut conn, user.id).await?;
        if !enabled.is_some_and(|factor| factor.confirmed()) {
            return Err(not_enrolled(user.id));
        }
        // The password first, checked and throttled as ChangePassword does.
        let passwords = LoginSubjects::new(&user.email, client.address);
        self.admit_login(&mut conn, &passwords).await?;
        // No connection is held while hashing.
        drop(conn);
        if self.hasher.verify(password, Some(&user.password_hash)).await? == Verdict::Invalid {
            return Err(Error::permission_denied(
                "WRONG_PASSWORD",
                "password is not the current password",
            ));
        }
        let mut conn = self.pool.get().await?;
        self.login_succeeded(&mut conn, &passwords).await?;
        let codes = LoginSubjects::second_factor(user.id, client.address);
        self.admit_login(&mut conn, &codes).await?;
        conn.transaction::<_, Error, _>(async |conn| {
            let factor = second_factors::lock(conn, user.id)
                .await?
                .filter(|factor| factor.confirmed())
                .ok_or_else(|| not_enrolled(user.id))?;
            self.spend_second_factor(conn, &factor, proof, Presenter::SignedIn)
                .await?;
            // Its recovery codes go with it (ON DELETE CASCADE).
            second_factors::delete(conn, user.id).await?;
            Ok(())
        })
        .await?;
        self.login_succeeded(&mut conn, &codes).await?;
        changed(user.id, "disabled");
        Ok(())
    }
}

/// The user, unless they are gone or disabled (their tokens are revoked, but
/// one may still be in flight).
fn active_user(user: Option<UserRow>) -> Result<UserRow, Error> {
    match user {
        Some(user) if !user.disabled => Ok(user),
        Some(_) => Err(Error::unauthenticated("USER_DISABLED", "this account is disabled")),
        None => Err(Error::not_found("user")),
    }
}
