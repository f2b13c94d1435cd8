//! Sign-in with external identity providers (OpenID Connect): starting a
//! sign-in, receiving the provider's answer, handing the application a
//! one-time code and exchanging it for Keel's tokens; linking, listing and
//! unlinking identities.
//!
//! Accounts are matched by (issuer, subject), never by email alone: a first
//! sign-in creates a user (UserRegistered, the email verified only when the
//! provider says so), unless a local account has that email, which is then
//! refused with LOCAL_ACCOUNT_EXISTS: the person signs in locally and links.

use chrono::{DateTime, Duration, Utc};
use diesel_async::AsyncConnection as _;
use keel::events::v1::{UserRegistered, event::Payload};
use keel_platform::{Error, Role, events::outbox};
use subtle::ConstantTimeEq as _;
use url::Url;
use uuid::Uuid;

use super::{Auth, ClientInfo, SOURCE, login::SignIn};
use crate::{
    domain::{Email, OpaqueToken, Password, Roles},
    oidc::{self, id_token, provider::Provider, refusal::Refusal, settings::ProviderSettings},
    password::{self, Verdict},
    store::{
        identities::{self, IdentityRow, NewIdentity},
        provider_sign_ins::{self, PendingSignIn, SignInCode},
        users::{self, NewUser, UserRow},
    },
};

/// How long a person may take at the provider.
const SIGN_IN_TTL: Duration = Duration::minutes(10);
/// How long the application has to exchange its code.
const CODE_TTL: Duration = Duration::seconds(60);

/// A sign-in sent to a provider.
#[derive(Debug)]
pub struct StartedSignIn {
    /// Where the browser goes.
    pub authorization_url: String,
    /// What the browser keeps and presents with the answer.
    pub browser_binding: OpaqueToken,
    /// When the sign-in lapses.
    pub expires: DateTime<Utc>,
}

/// Linking: the signed-in user, and their password when they gave one.
#[derive(Debug)]
pub struct Link<'a> {
    /// The user linking a provider.
    pub user_id: Uuid,
    /// Their password (required when the account has one).
    pub password: Option<&'a Password>,
}

/// The provider's answer, as the callback received it.
#[derive(Debug, Default)]
pub struct Callback<'a> {
    /// The provider (from the path).
    pub provider: &'a str,
    /// `state`.
    pub state: &'a str,
    /// `code`, if the provider signed the user in.
    pub code: Option<&'a str>,
    /// `error`, if it did not.
    pub error: Option<&'a str>,
    /// `iss` (RFC 9207), if sent.
    pub iss: Option<&'a str>,
    /// The browser's binding.
    pub browser_binding: &'a str,
}

/// Where the browser goes after the callback.
#[derive(Debug)]
pub enum Finished {
    /// To the application, with its one-time code.
    SignedIn {
        /// The return URL.
        return_url: String,
        /// The code for [`Auth::exchange_sign_in_code`].
        code: OpaqueToken,
    },
    /// To the application, with the reason it was refused.
    Refused {
        /// The return URL.
        return_url: String,
        /// The stable reason.
        reason: &'static str,
        /// The refusal for people.
        description: String,
    },
}

impl Auth {
    /// The configured providers.
    pub fn identity_providers(&self) -> impl Iterator<Item = &ProviderSettings> {
        self.providers.all()
    }

    /// Begins a sign-in (or, with `link`, a link) with `provider_id`,
    /// returning to `return_url` with a code the application redeems with
    /// the verifier of `app_code_challenge`.
    pub async fn start_provider_sign_in(
        &self,
        provider_id: &str,
        return_url: &str,
        app_code_challenge: &str,
        link: Option<Link<'_>>,
    ) -> Result<StartedSignIn, Error> {
        let refused = |refusal: Refusal| refusal.into_error(provider_id, &self.providers.metrics);
        let provider = self.providers.get(provider_id).map_err(refused)?;
        self.providers.check_return_url(return_url).map_err(refused)?;
        let link_user_id = match link {
            Some(link) => Some(self.check_link(link).await.map_err(refused)?),
            None => None,
        };
        let metadata = provider.metadata().await.map_err(refused)?;
        let (state, nonce, verifier, binding) = (
            OpaqueToken::generate()?,
            OpaqueToken::generate()?,
            OpaqueToken::generate()?,
            OpaqueToken::generate()?,
        );
        let expires = Utc::now() + SIGN_IN_TTL;
        provider_sign_ins::insert(
            &mut *self.pool.get().await?,
            &PendingSignIn {
                state_hash: state.hash(),
                provider: provider_id.to_owned(),
                browser_hash: binding.hash(),
                nonce: nonce.expose().to_owned(),
                pkce_verifier: verifier.expose().to_owned(),
                return_url: return_url.to_owned(),
                app_code_challenge: app_code_challenge.to_owned(),
                link_user_id,
                expires_at: expires,
            },
        )
        .await?;
        let mut url: Url = metadata.authorization_endpoint.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &provider.settings.client_id)
            .append_pair("redirect_uri", &self.providers.redirect_uri(provider_id))
            .append_pair("scope", &provider.settings.scopes.join(" "))
            .append_pair("state", state.expose())
            .append_pair("nonce", nonce.expose())
            .append_pair("code_challenge", &oidc::s256(verifier.expose()))
            .append_pair("code_challenge_method", "S256");
        Ok(StartedSignIn {
            authorization_url: url.into(),
            browser_binding: binding,
            expires,
        })
    }

    /// The user a link is for, once their password (if they have one) is
    /// checked.
    async fn check_link(&self, link: Link<'_>) -> Result<Uuid, Refusal> {
        let user = users::find(&mut *self.pool.get().await.map_err(internal)?, link.user_id)
            .await
            .map_err(internal)?
            .ok_or_else(Refusal::user_disabled)?;
        if user.disabled {
            return Err(Refusal::user_disabled());
        }
        if password::is_usable(&user.password_hash) {
            let given = link.password.ok_or_else(Refusal::password_required)?;
            let verdict = self
                .hasher
                .verify(given, Some(&user.password_hash))
                .await
                .map_err(internal)?;
            if verdict == Verdict::Invalid {
                return Err(Refusal::password_required());
            }
        }
        Ok(user.id)
    }

    /// Receives the provider's answer: the state first (single-use, this
    /// browser's, unexpired; an error of this call otherwise, as there is
    /// no return URL to trust), then everything else, whose refusals go
    /// back to the application.
    pub async fn finish_provider_sign_in(&self, callback: Callback<'_>) -> Result<Finished, Error> {
        let refused = |refusal: Refusal| refusal.into_error(callback.provider, &self.providers.metrics);
        let pending = self.take_pending(&callback).await.map_err(refused)?;
        let outcome = self.complete(&pending, &callback).await;
        let return_url = pending.return_url;
        match outcome {
            Ok(user) => {
                let code = OpaqueToken::generate()?;
                provider_sign_ins::insert_code(
                    &mut *self.pool.get().await?,
                    &SignInCode {
                        code_hash: code.hash(),
                        user_id: user.id,
                        provider: pending.provider.clone(),
                        app_code_challenge: pending.app_code_challenge,
                        expires_at: Utc::now() + CODE_TTL,
                    },
                )
                .await?;
                self.providers.metrics.count(&pending.provider, "ok");
                tracing::info!(user_id = %user.id, provider = %pending.provider, "provider sign-in");
                Ok(Finished::SignedIn { return_url, code })
            }
            Err(refusal) => {
                let reason = refusal.reason();
                let status = tonic::Status::from(refused(refusal));
                Ok(Finished::Refused {
                    return_url,
                    reason,
                    description: status.message().to_owned(),
                })
            }
        }
    }

    async fn take_pending(&self, callback: &Callback<'_>) -> Result<PendingSignIn, Refusal> {
        let state = OpaqueToken::parse("state", callback.state).map_err(|_| Refusal::state("malformed state"))?;
        let mut conn = self.pool.get().await.map_err(internal)?;
        let pending = provider_sign_ins::take(&mut conn, &state.hash())
            .await
            .map_err(internal)?
            .ok_or_else(|| Refusal::state("unknown or spent state"))?;
        if pending.provider != callback.provider {
            return Err(Refusal::state("state of another provider"));
        }
        if pending.expires_at < Utc::now() {
            return Err(Refusal::state("expired state"));
        }
        let binding = OpaqueToken::parse("browser_binding", callback.browser_binding)
            .map_err(|_| Refusal::state("no browser binding"))?;
        if !bool::from(binding.hash().ct_eq(&pending.browser_hash)) {
            return Err(Refusal::state("state of another browser"));
        }
        Ok(pending)
    }

    /// Everything after the state: the provider's verdict, the `iss`
    /// parameter, the code exchange, the ID token, userinfo, and the user.
    async fn complete(&self, pending: &PendingSignIn, callback: &Callback<'_>) -> Result<UserRow, Refusal> {
        let provider = self.providers.get(&pending.provider)?;
        if let Some(error) = callback.error.filter(|e| !e.is_empty()) {
            return Err(Refusal::provider_error(error));
        }
        let metadata = provider.metadata().await?;
        // RFC 9207: an `iss` that is not this provider's means the answer
        // came from another (a mix-up); a provider that says it sends one
        // must have.
        match callback.iss.filter(|iss| !iss.is_empty()) {
            Some(iss) if iss != provider.issuer() => {
                return Err(Refusal::issuer_mismatch(format!("iss {iss:?}")));
            }
            None if metadata.authorization_response_iss_parameter_supported => {
                return Err(Refusal::issuer_mismatch("no iss, though the provider sends it"));
            }
            _ => {}
        }
        let code = callback
            .code
            .filter(|code| !code.is_empty())
            .ok_or_else(|| Refusal::token_endpoint("no code in the answer"))?;
        let tokens = provider
            .exchange(
                &metadata,
                code,
                &self.providers.redirect_uri(&pending.provider),
                &pending.pkce_verifier,
            )
            .await?;
        let id_token = tokens
            .id_token
            .as_deref()
            .ok_or_else(|| Refusal::id_token("the token response has no id_token"))?;
        let mut claims = id_token::verify(provider, &metadata, id_token, &pending.nonce).await?;
        if let Some(info) = provider.userinfo(&metadata, &tokens.access_token).await? {
            if info.sub != claims.subject {
                return Err(Refusal::id_token("userinfo sub is not the ID token's"));
            }
            if claims.email.is_none() {
                claims.email_verified = info.email_verified.unwrap_or(false);
                claims.email = info.email;
            }
        }
        let user = match pending.link_user_id {
            Some(user_id) => self.link_identity(provider, &claims, user_id).await?,
            None => self.user_of(provider, &claims).await?,
        };
        if user.disabled {
            return Err(Refusal::user_disabled());
        }
        Ok(user)
    }

    /// The user an identity signs in: its linked user, or a new one.
    async fn user_of(&self, provider: &Provider, claims: &id_token::IdClaims) -> Result<UserRow, Refusal> {
        let issuer = provider.issuer();
        let mut conn = self.pool.get().await.map_err(internal)?;
        if let Some(identity) = identities::find(&mut conn, &issuer, &claims.subject)
            .await
            .map_err(internal)?
        {
            identities::touch(&mut conn, identity.id).await.map_err(internal)?;
            return users::find(&mut conn, identity.user_id)
                .await
                .map_err(internal)?
                .ok_or_else(Refusal::user_disabled);
        }
        let raw = claims
            .email
            .as_deref()
            .ok_or_else(|| Refusal::email_unusable("no email shared (is the email scope configured?)"))?;
        let email = Email::parse(raw).map_err(|_| Refusal::email_unusable("the email it shared is not valid"))?;
        let skeleton = email.skeleton();
        // Never by email alone: a local account with this email (verified
        // at the provider or not) signs in locally and links.
        if users::find_by_email_or_skeleton(&mut conn, email.as_str(), &skeleton)
            .await
            .map_err(internal)?
            .is_some()
        {
            return Err(Refusal::local_account_exists());
        }
        let roles = Roles::new(vec![Role::User]).map_err(|err| internal(format!("{err:?}")))?;
        let settings = &provider.settings;
        let created = conn
            .transaction::<_, Error, _>(async |conn| {
                let user = users::insert(
                    conn,
                    &NewUser {
                        id: Uuid::now_v7(),
                        email: email.as_str(),
                        email_skeleton: &skeleton,
                        password_hash: password::NONE,
                        roles: roles.names(),
                        register_request_id: None,
                    },
                )
                .await
                .map_err(|err| Error::from(anyhow::anyhow!("inserting the user: {err}")))?;
                let user = if claims.email_verified {
                    users::mark_email_verified(conn, user.id).await?.unwrap_or(user)
                } else {
                    user
                };
                let linked = identities::insert(
                    conn,
                    &NewIdentity {
                        id: Uuid::now_v7(),
                        user_id: user.id,
                        provider: &settings.id,
                        issuer: &issuer,
                        subject: &claims.subject,
                        email: Some(email.as_str()),
                    },
                )
                .await?;
                if !linked {
                    return Err(Error::aborted(
                        "IDENTITY_LINKED_CONCURRENTLY",
                        "the identity was linked meanwhile; retry",
                    ));
                }
                let registered = Payload::UserRegistered(UserRegistered {
                    user_id: user.id.to_string(),
                    email: user.email.clone(),
                });
                outbox::enqueue(conn, SOURCE, registered).await?;
                Ok(user)
            })
            .await;
        match created {
            Ok(user) => {
                tracing::info!(user_id = %user.id, provider = %settings.id, "user registered through a provider");
                Ok(user)
            }
            Err(err) => Err(internal(tonic::Status::from(err).message())),
        }
    }

    /// Links an identity to `user_id` (a no-op when it already is).
    async fn link_identity(
        &self,
        provider: &Provider,
        claims: &id_token::IdClaims,
        user_id: Uuid,
    ) -> Result<UserRow, Refusal> {
        let issuer = provider.issuer();
        let mut conn = self.pool.get().await.map_err(internal)?;
        let linked = identities::insert(
            &mut conn,
            &NewIdentity {
                id: Uuid::now_v7(),
                user_id,
                provider: &provider.settings.id,
                issuer: &issuer,
                subject: &claims.subject,
                email: claims.email.as_deref(),
            },
        )
        .await
        .map_err(internal)?;
        if !linked {
            let existing = identities::find(&mut conn, &issuer, &claims.subject)
                .await
                .map_err(internal)?;
            if existing.is_some_and(|identity| identity.user_id != user_id) {
                return Err(Refusal::identity_taken());
            }
        }
        tracing::info!(%user_id, provider = %provider.settings.id, "identity linked");
        users::find(&mut conn, user_id)
            .await
            .map_err(internal)?
            .ok_or_else(Refusal::user_disabled)
    }

    /// Exchanges a sign-in code, with the application's PKCE `verifier`,
    /// for what a password login answers.
    pub async fn exchange_sign_in_code(
        &self,
        code: &OpaqueToken,
        verifier: &str,
        client: &ClientInfo,
    ) -> Result<SignIn, Error> {
        let mut conn = self.pool.get().await?;
        let taken = provider_sign_ins::take_code(&mut conn, &code.hash()).await?;
        let provider = taken.as_ref().map_or("unknown", |c| c.provider.as_str()).to_owned();
        let refused = |refusal: Refusal| refusal.into_error(&provider, &self.providers.metrics);
        let taken = taken.ok_or_else(|| refused(Refusal::code("unknown or spent code")))?;
        if taken.expires_at < Utc::now() {
            return Err(refused(Refusal::code("expired code")));
        }
        if !bool::from(
            oidc::s256(verifier)
                .as_bytes()
                .ct_eq(taken.app_code_challenge.as_bytes()),
        ) {
            return Err(refused(Refusal::code("verifier does not match the challenge")));
        }
        let user = users::find(&mut conn, taken.user_id)
            .await?
            .ok_or_else(|| refused(Refusal::user_disabled()))?;
        if user.disabled {
            return Err(refused(Refusal::user_disabled()));
        }
        drop(conn);
        self.first_factor_passed(user, client).await
    }

    /// Deletes provider sign-ins and sign-in codes that expired unused.
    pub async fn prune_provider_sign_ins(&self) -> anyhow::Result<usize> {
        use anyhow::Context as _;
        let mut conn = self
            .pool
            .get()
            .await
            .context("a connection to prune provider sign-ins")?;
        provider_sign_ins::prune(&mut conn, Utc::now())
            .await
            .context("deleting expired provider sign-ins")
    }

    /// The caller's identities.
    pub async fn linked_identities(&self, user_id: Uuid) -> Result<Vec<IdentityRow>, Error> {
        Ok(identities::of_user(&mut *self.pool.get().await?, user_id).await?)
    }

    /// Unlinks the caller's identity `identity_id`, unless it is their only
    /// way to sign in.
    pub async fn unlink_identity(&self, user_id: Uuid, identity_id: Uuid) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        let metrics = &self.providers.metrics;
        conn.transaction::<_, Error, _>(async |conn| {
            let user = users::find(conn, user_id)
                .await?
                .ok_or_else(|| Error::not_found("user"))?;
            let identities = identities::of_user(conn, user_id).await?;
            let Some(identity) = identities.iter().find(|i| i.id == identity_id) else {
                return Err(Error::not_found("identity"));
            };
            if !password::is_usable(&user.password_hash) && identities.len() == 1 {
                return Err(Refusal::last_way_in().into_error(&identity.provider, metrics));
            }
            identities::delete(conn, user_id, identity_id).await?;
            tracing::info!(%user_id, provider = %identity.provider, "identity unlinked");
            Ok(())
        })
        .await
    }
}

/// An unexpected failure inside a refusal's path: the provider is not to
/// blame, but the sign-in cannot go on.
fn internal(err: impl std::fmt::Display) -> Refusal {
    Refusal::provider_unavailable(anyhow::anyhow!("auth could not finish the sign-in: {err}"))
}
