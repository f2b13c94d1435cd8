//! Registration and email verification: creating users and confirming
//! their email.

use chrono::Utc;
use diesel_async::AsyncConnection as _;
use keel::events::v1::{EmailVerificationRequested, UserRegistered, event::Payload};
use keel_platform::{Error, Role, events::EventType, events::outbox, proto::timestamp, serve::rpc::invalid};
use uuid::Uuid;

use super::{Auth, ClientInfo, SOURCE, VERIFICATION_TOKEN_TTL, throttle::address_key};
use crate::{
    domain::{Email, OpaqueToken, Password, Roles},
    store::{
        one_time_tokens::{self, TokenPurpose},
        users::{self, InsertUserError, NewUser, UserRow},
    },
};

impl Auth {
    /// Registers a user from `client` with the `user` role (each
    /// registration costs a password hash and a mail, so calls per client
    /// address are limited), or returns the one an earlier call with the same
    /// `request_id` created.
    pub async fn register(
        &self,
        email: &Email,
        password: &Password,
        request_id: Option<String>,
        client: &ClientInfo,
    ) -> Result<UserRow, Error> {
        let roles = Roles::new(vec![Role::User]).map_err(invalid)?;
        self.limit_calls(
            &mut *self.pool.get().await?,
            &[(
                format!("register:address:{}", address_key(client.address)),
                self.call_limits.register_per_address,
            )],
        )
        .await?;
        self.create_user(email, password, &roles, request_id).await
    }

    /// Uses an email verification token: its user's email is verified.
    pub async fn verify_email(&self, token: &OpaqueToken) -> Result<UserRow, Error> {
        let mut conn = self.pool.get().await?;
        conn.transaction::<_, Error, _>(async |conn| {
            let user_id = one_time_tokens::consume(conn, &token.hash(), TokenPurpose::EmailVerification)
                .await?
                .ok_or_else(|| {
                    Error::unauthenticated("INVALID_TOKEN", "the verification token is unknown, used or expired")
                })?;
            users::mark_email_verified(conn, user_id)
                .await?
                .ok_or_else(|| Error::not_found("user"))
        })
        .await
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
            && let Some(user) = users::find_by_register_request(&mut conn, request_id).await?
        {
            return replay(user, email);
        }
        let skeleton = email.skeleton();
        // A lookalike of a registered email is answered as that email would
        // be: ALREADY_EXISTS, revealing no more than a plain duplicate does.
        if let Some(existing) = users::find_by_email_or_skeleton(&mut conn, email.as_str(), &skeleton).await? {
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
                let user = users::insert(
                    conn,
                    &NewUser {
                        id: Uuid::now_v7(),
                        email: email.as_str(),
                        email_skeleton: &skeleton,
                        password_hash: &password_hash,
                        roles: roles.names(),
                        register_request_id: request_id.as_deref(),
                    },
                )
                .await
                .map_err(RegisterFailure::Insert)?;
                one_time_tokens::insert(
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
                let sealed_token = self
                    .seal_token(EventType::EmailVerificationRequested, user.id, &verification)
                    .map_err(RegisterFailure::Other)?;
                let verify = Payload::EmailVerificationRequested(EmailVerificationRequested {
                    user_id: user.id.to_string(),
                    email: user.email.clone(),
                    expire_time: Some(timestamp(verification_expires)),
                    sealed_token,
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
            // the email's (or its skeleton's) come before the request id's.
            Err(RegisterFailure::Insert(InsertUserError::EmailTaken)) => match &request_id {
                Some(request_id) => match users::find_by_register_request(&mut conn, request_id).await? {
                    Some(user) => replay(user, email),
                    None => Err(email_taken()),
                },
                None => Err(email_taken()),
            },
            // A concurrent retry with the same key won the race.
            Err(RegisterFailure::Insert(InsertUserError::RequestIdTaken)) => {
                let request_id = request_id.unwrap_or_default();
                let user = users::find_by_register_request(&mut conn, &request_id)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("request id {request_id} vanished"))?;
                replay(user, email)
            }
            Err(RegisterFailure::Insert(InsertUserError::Database(err))) => Err(err.into()),
            Err(RegisterFailure::Other(err)) => Err(err),
        }
    }
}

/// Gives every user stored before emails had skeletons its normalized email
/// and skeleton, so the unique index covers them too. A user whose email
/// now looks like another's keeps none (both exist already; an
/// administrator decides) and is logged.
pub(super) async fn fill_email_skeletons(pool: &keel_platform::db::Pool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut conn = pool.get().await.context("connecting to fill email skeletons")?;
    let users = users::without_skeleton(&mut conn)
        .await
        .context("listing users without an email skeleton")?;
    for (user_id, stored) in users {
        // An address stored before NFKC normalization is kept as it was
        // when it no longer parses, so the user is still found by it.
        let email = Email::parse(&stored).map_or(stored, |email| email.as_str().to_owned());
        let skeleton: String = unicode_security::skeleton(&email).collect();
        let filled = users::set_email_skeleton(&mut conn, user_id, &email, &skeleton)
            .await
            .with_context(|| format!("storing the email skeleton of user {user_id}"))?;
        if !filled {
            tracing::warn!(%user_id, "this user's email looks like another user's; it has no skeleton");
        }
    }
    Ok(())
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

fn replay(user: UserRow, email: &Email) -> Result<UserRow, Error> {
    if user.email == email.as_str() {
        Ok(user)
    } else {
        Err(Error::already_exists(
            "REQUEST_ID_REUSED",
            "this request_id was used for a different registration",
        ))
    }
}

fn email_taken() -> Error {
    Error::already_exists("EMAIL_TAKEN", "a user with this email is already registered")
}
