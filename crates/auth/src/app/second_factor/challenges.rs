//! The sign-in challenge: when the first factor of a user with a second one
//! passes, [`Auth::first_factor_passed`] stores a challenge instead of starting a
//! session, and [`Auth::verify_second_factor`] completes it with a code or a
//! recovery code, starting the session exactly as a plain sign-in does.

use chrono::{DateTime, Duration, Utc};
use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use keel_platform::{Error, serve::audit};
use sha2::{Digest as _, Sha256};

use super::{Presenter, Spent, metrics::Operation, recovery_code_used};
use crate::{
    app::{
        Auth, ClientInfo, SignedIn, credentials_changed,
        throttle::{LoginSubjects, address_key},
    },
    domain::{OpaqueToken, SecondFactor},
    store::{
        login_challenges::{self, NewChallenge},
        second_factors, users,
        users::UserRow,
    },
};

/// How long a challenge can be answered.
pub const CHALLENGE_TTL: Duration = Duration::minutes(5);

/// A sign-in waiting for its second factor.
#[derive(Debug, Clone)]
pub struct Challenge {
    /// The token VerifySecondFactor takes, single-use; only its hash is
    /// stored.
    pub token: OpaqueToken,
    /// When it expires.
    pub expires: DateTime<Utc>,
}

impl Auth {
    /// Stores a challenge for `user`, whose first factor passed against
    /// `verified_hash`, bound to `client`'s address.
    pub(in crate::app) async fn start_challenge(
        &self,
        conn: &mut AsyncPgConnection,
        user: &UserRow,
        verified_hash: &str,
        client: &ClientInfo,
    ) -> Result<Challenge, Error> {
        let token = OpaqueToken::generate()?;
        let expires = Utc::now() + CHALLENGE_TTL;
        // Tidies up after the user's abandoned sign-ins.
        login_challenges::delete_expired_of_user(conn, user.id).await?;
        let challenge = NewChallenge {
            token_hash: &token.hash(),
            user_id: user.id,
            credentials_hash: &credentials_hash(verified_hash),
            client_address: &address_key(client.address),
            expires_at: expires,
        };
        login_challenges::insert(conn, &challenge).await?;
        Ok(Challenge { token, expires })
    }

    /// Completes the sign-in of `challenge` with `proof` from `client`:
    /// throttled as passwords are, refused for a disabled user or one whose
    /// password changed since, and otherwise a new session, as Login starts
    /// one.
    pub async fn verify_second_factor(
        &self,
        challenge: &OpaqueToken,
        proof: &SecondFactor,
        client: &ClientInfo,
    ) -> Result<SignedIn, Error> {
        let signed_in = self.complete_challenge(challenge, proof, client).await;
        self.second_factor_metrics.record(Operation::Verify, &signed_in);
        signed_in
    }

    async fn complete_challenge(
        &self,
        challenge: &OpaqueToken,
        proof: &SecondFactor,
        client: &ClientInfo,
    ) -> Result<SignedIn, Error> {
        let hash = challenge.hash();
        let address = address_key(client.address);
        let mut conn = self.pool.get().await?;
        // An unknown, expired or completed challenge, or one from another
        // client, is refused before anything is counted: the token is 256
        // random bits, nothing to guess.
        let pending = login_challenges::peek(&mut conn, &hash)
            .await?
            .filter(|pending| pending.client_address == address)
            .ok_or_else(invalid_challenge)?;
        audit::record_subject(&format_args!("user:{}", pending.user_id));
        let subjects = LoginSubjects::second_factor(pending.user_id, client.address);
        // Counts as a failure until the code checks out (as a password does).
        self.admit_login(&mut conn, &subjects).await?;
        let (user, tokens, spent) = conn
            .transaction::<_, Error, _>(async |conn| {
                // Taken, so it completes once; a refusal below rolls back and
                // leaves it for the right code.
                let taken = login_challenges::take(conn, &hash)
                    .await?
                    .filter(|taken| taken.client_address == address)
                    .ok_or_else(invalid_challenge)?;
                let user = users::find(conn, taken.user_id).await?.ok_or_else(invalid_challenge)?;
                if user.disabled {
                    return Err(Error::unauthenticated("USER_DISABLED", "this account is disabled"));
                }
                if credentials_hash(&user.password_hash) != taken.credentials_hash {
                    return Err(credentials_changed());
                }
                // Disabled since the challenge: nothing left to answer it with.
                let factor = second_factors::lock(conn, user.id)
                    .await?
                    .filter(|factor| factor.confirmed())
                    .ok_or_else(invalid_challenge)?;
                let spent = self
                    .spend_second_factor(conn, &factor, proof, Presenter::SigningIn)
                    .await?;
                let tokens = self.start_session(conn, &user, &user.password_hash, client).await?;
                Ok((user, tokens, spent))
            })
            .await?;
        self.login_succeeded(&mut conn, &subjects).await?;
        if let Spent::RecoveryCode { left } = spent {
            recovery_code_used(user.id, left);
        }
        Ok(SignedIn { user, tokens })
    }
}

/// What a challenge keeps of the credentials its first factor was checked
/// against: the SHA-256 of the password hash, enough to see that it changed.
fn credentials_hash(password_hash: &str) -> Vec<u8> {
    Sha256::digest(password_hash.as_bytes()).to_vec()
}

fn invalid_challenge() -> Error {
    Error::unauthenticated(
        "INVALID_CHALLENGE",
        "the sign-in challenge is unknown, expired or already answered; log in again",
    )
}
