//! The usual first steps of a test: users registered and signed in,
//! service tokens, users created directly in auth's database, and reading
//! what auth wrote (password hashes, events, sealed tokens).

use anyhow::Context as _;
use keel::auth::v1 as pb;
use keel_auth::{domain, store::users::UserRow};
use keel_platform::{Role, events::EventType, sealing::SealingKey};
use secrecy::ExposeSecret as _;

use super::{AUTH_RELAY_CLIENT_ID, AUTH_RELAY_CLIENT_SECRET, Suite, TEST_CLIENT_ID, TEST_CLIENT_SECRET};

impl Suite {
    /// Registers a user through the API.
    pub async fn register(&self, email: &str, password: &str) -> anyhow::Result<pb::User> {
        let response = self
            .auth()
            .register(pb::RegisterRequest {
                request_id: uuid::Uuid::now_v7().to_string(),
                email: email.into(),
                password: password.into(),
            })
            .await?;
        response.into_inner().user.context("no user in the response")
    }

    /// Registers a user through the API (owned strings, for many at once).
    pub async fn register_as(&self, email: String, password: &str) -> anyhow::Result<pb::User> {
        self.register(&email, password).await
    }

    /// Logs in through the API.
    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<pb::LoginResponse> {
        Ok(self
            .auth()
            .login(pb::LoginRequest {
                email: email.into(),
                password: password.into(),
            })
            .await?
            .into_inner())
    }

    /// Refreshes through the API; the presented token is spent.
    pub async fn refresh(&self, refresh_token: &str) -> Result<pb::TokenPair, tonic::Status> {
        let request = pb::RefreshRequest {
            refresh_token: refresh_token.into(),
        };
        let tokens = self.auth().refresh(request).await?.into_inner().tokens;
        tokens.ok_or_else(|| tonic::Status::internal("Refresh answered without tokens"))
    }

    /// Registers and logs in a new user; returns the user and its tokens.
    pub async fn signed_in_user(&self) -> anyhow::Result<(pb::User, pb::TokenPair)> {
        let email = format!("user-{}@example.com", uuid::Uuid::now_v7().simple());
        self.register(&email, "a perfectly fine password").await?;
        let login = self.login(&email, "a perfectly fine password").await?;
        Ok((login.user.context("no user")?, login.tokens.context("no tokens")?))
    }

    /// Creates an administrator directly (as `keel admin create-user` does)
    /// and logs them in.
    pub async fn signed_in_admin(&self) -> anyhow::Result<(pb::User, pb::TokenPair)> {
        let email = format!("admin-{}@example.com", uuid::Uuid::now_v7().simple());
        let password = "an administrator's password";
        self.create_user(&email, password, &[Role::User, Role::Admin]).await?;
        let login = self.login(&email, password).await?;
        Ok((login.user.context("no user")?, login.tokens.context("no tokens")?))
    }

    /// A service token for the test client with `scopes` (all of its scopes
    /// when empty).
    pub async fn service_token(&self, scopes: &[&str]) -> anyhow::Result<String> {
        Ok(self
            .auth()
            .issue_service_token(pb::IssueServiceTokenRequest {
                client_id: TEST_CLIENT_ID.into(),
                client_secret: TEST_CLIENT_SECRET.into(),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            })
            .await?
            .into_inner()
            .access_token)
    }

    /// A token to deliver events whose source is auth.
    pub async fn auth_relay_token(&self) -> anyhow::Result<String> {
        Ok(self
            .auth()
            .issue_service_token(pb::IssueServiceTokenRequest {
                client_id: AUTH_RELAY_CLIENT_ID.into(),
                client_secret: AUTH_RELAY_CLIENT_SECRET.into(),
                scopes: Vec::new(),
            })
            .await?
            .into_inner()
            .access_token)
    }

    /// Creates a user with `roles` straight through the service's code.
    pub async fn create_user(&self, email: &str, password: &str, roles: &[Role]) -> anyhow::Result<UserRow> {
        let pool = keel_platform::db::pool(self.auth_database_url(), &self.auth_config.service.pool)?;
        let auth = keel_auth::Auth::build(&self.auth_config, pool, &self.clients.entries).await?;
        let email = domain::Email::parse(email).map_err(|v| anyhow::anyhow!(v.description))?;
        let password =
            domain::Password::parse("password", password.into()).map_err(|v| anyhow::anyhow!(v.description))?;
        let roles = domain::Roles::new(roles.to_vec()).map_err(|v| anyhow::anyhow!(v.description))?;
        auth.create_user(&email, &password, &roles, None)
            .await
            .map_err(|err| anyhow::anyhow!("{err}"))
    }

    /// The password hash auth stores for `email`.
    pub async fn stored_password_hash(&self, email: &str) -> anyhow::Result<String> {
        use diesel::{ExpressionMethods as _, QueryDsl as _};
        use diesel_async::RunQueryDsl as _;
        use keel_auth::schema::users;
        Ok(users::table
            .filter(users::email.eq(email))
            .select(users::password_hash)
            .first(&mut self.auth_db().await?)
            .await?)
    }

    /// Opens the one-time token sealed in a PasswordResetRequested or
    /// EmailVerificationRequested event, as the consumer that mails it does.
    pub fn open_token(&self, payload: &keel::events::v1::event::Payload) -> anyhow::Result<String> {
        use keel::events::v1::event::Payload;
        let (user_id, sealed) = match payload {
            Payload::PasswordResetRequested(event) => (&event.user_id, &event.sealed_token),
            Payload::EmailVerificationRequested(event) => (&event.user_id, &event.sealed_token),
            other => anyhow::bail!("{} events carry no token", EventType::of(other)),
        };
        let key: SealingKey = self.clients.event_secrets_key.expose_secret().parse()?;
        let sealed = sealed.as_ref().context("the event carries no sealed token")?;
        key.open_event_secret(EventType::of(payload), user_id, sealed)
    }

    /// Auth's outbox events of `event_type` (of every type when None),
    /// oldest first.
    pub async fn auth_events(&self, event_type: Option<&str>) -> anyhow::Result<Vec<keel::events::v1::Event>> {
        use diesel::{ExpressionMethods as _, QueryDsl as _};
        use diesel_async::RunQueryDsl as _;
        use keel_platform::events::outbox::outbox;
        use prost::Message as _;

        let mut conn = self.auth_db().await?;
        let mut query = outbox::table
            .order(outbox::created_at.asc())
            .select(outbox::payload)
            .into_boxed();
        if let Some(event_type) = event_type {
            query = query.filter(outbox::event_type.eq(event_type.to_owned()));
        }
        let payloads: Vec<Vec<u8>> = query.load(&mut conn).await?;
        payloads
            .iter()
            .map(|bytes| keel::events::v1::Event::decode(bytes.as_slice()).context("decoding an outbox event"))
            .collect()
    }
}

/// `message` with `authorization: Bearer <token>`.
pub fn authorized<T>(message: T, access_token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {access_token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}
