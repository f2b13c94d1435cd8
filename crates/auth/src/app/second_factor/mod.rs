//! The second factor: a TOTP authenticator (RFC 6238, see [`crate::totp`])
//! with single-use recovery codes.
//!
//! - [`enrollment`] holds [`Auth::enroll_totp`], [`Auth::confirm_totp`] and
//!   [`Auth::disable_totp`];
//! - [`challenges`] holds the challenge a sign-in answers when its first
//!   factor passed for a user who has one (stored by
//!   [`Auth::first_factor_passed`]) and [`Auth::verify_second_factor`], which
//!   completes it;
//! - [`metrics`] counts how each operation ends.
//!
//! Every code is checked behind the failed-login throttle (its own counters,
//! see `LoginSubjects::second_factor`) and under the factor's row lock, and
//! spent in the same transaction that acts on it: a code's time step once, a
//! recovery code once.

pub mod challenges;
pub mod enrollment;
pub mod metrics;

use anyhow::Context as _;
use chrono::Utc;
use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use keel_platform::{Error, db::Pool, sealing::SealingKey, serve::audit};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Auth;
use crate::{
    domain::{SecondFactor, TotpCode},
    store::{
        login_challenges,
        second_factors::{self, FactorRow},
    },
    totp::{CodeCheck, TotpSecret},
};

/// Who presents a code, which decides how a wrong one is refused: while
/// signing in the code is the credential (UNAUTHENTICATED); a signed-in
/// caller's token is good, so theirs is PERMISSION_DENIED, as ChangePassword's
/// wrong password is.
#[derive(Debug, Clone, Copy)]
enum Presenter {
    SigningIn,
    SignedIn,
}

impl Presenter {
    fn refuse(self, reason: &'static str, message: &str) -> Error {
        match self {
            Presenter::SigningIn => Error::unauthenticated(reason, message),
            Presenter::SignedIn => Error::permission_denied(reason, message),
        }
    }
}

/// What a spent second factor was.
#[derive(Debug, Clone, Copy)]
enum Spent {
    Code,
    RecoveryCode {
        /// The user's recovery codes still unused.
        left: i64,
    },
}

impl Auth {
    /// The time step of `code` if it is a fresh code of `factor`'s secret.
    fn check_code(&self, factor: &FactorRow, code: &TotpCode, presenter: Presenter) -> Result<i64, Error> {
        let secret = TotpSecret::open(
            &factor.secret,
            factor.sealed_with.as_deref(),
            factor.user_id,
            self.key_encryption_key.as_ref(),
        )?;
        match secret.check(code.expose(), Utc::now().timestamp(), factor.last_used_step)? {
            CodeCheck::Accepted { step } => Ok(step),
            CodeCheck::Reused => {
                Err(presenter.refuse("CODE_REUSED", "this code was already used; wait for the app's next one"))
            }
            CodeCheck::Wrong => Err(presenter.refuse("INVALID_CODE", "the code is wrong")),
        }
    }

    /// Checks `proof` against `factor`, which the caller's transaction holds
    /// locked, and spends it there.
    async fn spend_second_factor(
        &self,
        conn: &mut AsyncPgConnection,
        factor: &FactorRow,
        proof: &SecondFactor,
        presenter: Presenter,
    ) -> Result<Spent, Error> {
        match proof {
            SecondFactor::Code(code) => {
                let step = self.check_code(factor, code, presenter)?;
                second_factors::spend_step(conn, factor.user_id, step).await?;
                Ok(Spent::Code)
            }
            SecondFactor::RecoveryCode(code) => {
                if !second_factors::spend_recovery_code(conn, factor.user_id, &code.hash(factor.user_id)).await? {
                    return Err(presenter.refuse(
                        "INVALID_RECOVERY_CODE",
                        "the recovery code is wrong or was already used",
                    ));
                }
                let left = second_factors::recovery_codes_left(conn, factor.user_id).await?;
                Ok(Spent::RecoveryCode { left })
            }
        }
    }

    /// Deletes expired sign-in challenges. Returns how many.
    pub async fn prune_login_challenges(&self) -> anyhow::Result<usize> {
        let mut conn = self.pool.get().await.context("a connection to prune challenges")?;
        login_challenges::delete_expired(&mut conn)
            .await
            .context("deleting expired sign-in challenges")
    }
}

/// Deletes expired sign-in challenges every minute until `shutdown`.
pub async fn prune(auth: Auth, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(err) = auth.prune_login_challenges().await {
            tracing::warn!(error = format!("{err:#}"), "pruning sign-in challenges failed");
        }
    }
}

/// Seals every TOTP secret stored in the clear under `kek`, or with no `kek`
/// says loudly that they are stored so: what [`crate::keys`] does for the
/// signing keys. Run at start.
pub async fn protect_secrets(pool: &Pool, kek: Option<&SealingKey>) -> anyhow::Result<()> {
    let Some(kek) = kek else {
        tracing::warn!(
            "KEEL_AUTH_KEY_ENCRYPTION_KEY is not set: second-factor (TOTP) secrets are stored unencrypted, \
             so a copy of auth's database yields every user's codes; set it in production"
        );
        return Ok(());
    };
    let mut conn = pool.get().await.context("taking a connection to seal TOTP secrets")?;
    let sealed = conn
        .transaction::<_, anyhow::Error, _>(async |conn| {
            let plain = second_factors::lock_plain_secrets(conn).await?;
            for factor in &plain {
                let secret = TotpSecret::open(&factor.secret, None, factor.user_id, None)?;
                let (stored, _) = secret.seal(factor.user_id, Some(kek))?;
                second_factors::seal_secret(conn, factor.user_id, &stored, kek.id()).await?;
            }
            Ok(plain.len())
        })
        .await?;
    if sealed > 0 {
        tracing::info!(
            sealed,
            kek = kek.id(),
            "sealed plain TOTP secrets under the key-encryption key"
        );
    }
    Ok(())
}

/// Logs a change to a user's second factor as a security event (ASVS 7.2:
/// an authentication factor added, removed or used in its place).
fn changed(user_id: Uuid, change: &'static str) {
    tracing::info!(target: audit::TARGET, event = "second_factor", change, %user_id, "second factor changed");
}

/// Logs a recovery code spent, with how many the user has left.
fn recovery_code_used(user_id: Uuid, left: i64) {
    tracing::info!(
        target: audit::TARGET,
        event = "second_factor",
        change = "recovery_code_used",
        %user_id,
        left,
        "recovery code used"
    );
}

/// ALREADY_EXISTS `TOTP_ALREADY_ENROLLED`, logged as a security event: the
/// refusals of UNAUTHENTICATED, PERMISSION_DENIED and throttling are logged
/// where every call ends, this one here (someone holding a token may be
/// trying to put their own authenticator on the account).
fn already_enrolled(user_id: Uuid) -> Error {
    refusal_event(user_id, "TOTP_ALREADY_ENROLLED");
    Error::already_exists(
        "TOTP_ALREADY_ENROLLED",
        "a second factor is already enabled; disable it first",
    )
}

/// FAILED_PRECONDITION `TOTP_NOT_ENROLLED`, logged as a security event.
fn not_enrolled(user_id: Uuid) -> Error {
    refusal_event(user_id, "TOTP_NOT_ENROLLED");
    Error::failed_precondition(
        "TOTP_NOT_ENROLLED",
        "no second factor is enabled or waiting for confirmation; call EnrollTotp first",
    )
}

fn refusal_event(user_id: Uuid, reason: &'static str) {
    tracing::info!(
        target: audit::TARGET,
        event = "second_factor_refused",
        reason,
        %user_id,
        "call refused"
    );
}
