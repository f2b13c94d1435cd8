//! The whole suite in-process: every service on port 0 against its own fresh
//! database, with typed clients and helpers for the usual first steps.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use keel::{
    accounts::v1::accounts_service_client::AccountsServiceClient,
    auth::v1::{self as pb, auth_service_client::AuthServiceClient},
};
use keel_accounts::AccountsConfig;
use keel_auth::{AuthConfig, domain, store::UserRow};
use keel_platform::Role;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

use crate::database::{Schema, TestDatabase};

/// The service client every suite configures on auth.
pub const TEST_CLIENT_ID: &str = "test-relay";
/// Its secret.
pub const TEST_CLIENT_SECRET: &str = "test-relay-secret-0123456789";
/// Its scopes.
pub const TEST_CLIENT_SCOPES: &str = "events.deliver accounts.deposit accounts.debit accounts.refund";

/// A client that may speak for auth's relay (as auth's own relay does), for
/// tests that deliver auth's events themselves.
pub const AUTH_RELAY_CLIENT_ID: &str = "auth";
/// Its secret.
pub const AUTH_RELAY_CLIENT_SECRET: &str = "auth-relay-secret-0123456789";

/// The auth schema.
pub const AUTH_SCHEMA: Schema = Schema {
    name: "auth",
    migrations: || keel_auth::MIGRATIONS,
    dir: keel_auth::MIGRATIONS_DIR,
};

/// The accounts schema.
pub const ACCOUNTS_SCHEMA: Schema = Schema {
    name: "accounts",
    migrations: || keel_accounts::MIGRATIONS,
    dir: keel_accounts::MIGRATIONS_DIR,
};

/// How to start a suite.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Extra `keel serve auth` flags.
    pub auth_args: Vec<String>,
    /// Extra `keel serve accounts` flags.
    pub accounts_args: Vec<String>,
    /// Whether accounts starts with the suite (else: [`Suite::start_accounts`]).
    pub start_accounts: bool,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        Self {
            auth_args: Vec::new(),
            accounts_args: Vec::new(),
            start_accounts: true,
        }
    }
}

/// A running service.
#[derive(Debug)]
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// A running suite; dropping it shuts every service down.
#[derive(Debug)]
pub struct Suite {
    auth_addr: SocketAddr,
    auth_channel: Channel,
    auth_db: TestDatabase,
    auth_config: AuthConfig,
    auth: Option<Running>,
    accounts_addr: SocketAddr,
    accounts_channel: Channel,
    accounts_db: TestDatabase,
    accounts_config: AccountsConfig,
    accounts: Option<Running>,
}

/// Starts the suite with default settings.
pub async fn spawn_suite() -> anyhow::Result<Suite> {
    spawn_suite_with_options(SuiteOptions::default()).await
}

/// Starts the suite; `auth_args` are extra `keel serve auth` flags.
pub async fn spawn_suite_with(auth_args: &[&str]) -> anyhow::Result<Suite> {
    spawn_suite_with_options(SuiteOptions {
        auth_args: auth_args.iter().map(|a| (*a).to_owned()).collect(),
        ..SuiteOptions::default()
    })
    .await
}

/// Starts the suite as `options` say.
pub async fn spawn_suite_with_options(options: SuiteOptions) -> anyhow::Result<Suite> {
    let (auth_db, accounts_db) =
        tokio::try_join!(TestDatabase::create(AUTH_SCHEMA), TestDatabase::create(ACCOUNTS_SCHEMA))?;
    let auth_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let auth_addr = auth_listener.local_addr()?;
    let accounts_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let accounts_addr = accounts_listener.local_addr()?;

    let clients = format!(
        "{TEST_CLIENT_ID}:{TEST_CLIENT_SECRET}:{TEST_CLIENT_SCOPES};\
         {AUTH_RELAY_CLIENT_ID}:{AUTH_RELAY_CLIENT_SECRET}:events.deliver"
    );
    let accounts_url = format!("http://{accounts_addr}");
    let auth_args = [
        "keel",
        "--service-clients",
        &clients,
        "--db-pool-size",
        "8",
        "--accounts-url",
        &accounts_url,
        // Quick retries: tests stop and start services.
        "--relay-poll-ms",
        "200",
        "--relay-max-backoff-ms",
        "400",
        // Test gateways call from loopback and name the client they serve.
        "--trusted-proxies",
        "127.0.0.1",
    ]
    .into_iter()
    .chain(options.auth_args.iter().map(String::as_str));
    let auth_config = AuthConfig::from_args(auth_args).context("auth test flags")?;
    let auth_url = format!("http://{auth_addr}");
    let accounts_args = ["keel", "--auth-url", &auth_url, "--db-pool-size", "8"]
        .into_iter()
        .chain(options.accounts_args.iter().map(String::as_str));
    let accounts_config = AccountsConfig::from_args(accounts_args).context("accounts test flags")?;

    let auth_shutdown = CancellationToken::new();
    let auth = Running {
        task: tokio::spawn(keel_auth::run(
            auth_config.clone(),
            auth_db.url().to_owned(),
            auth_listener,
            auth_shutdown.clone(),
        )),
        shutdown: auth_shutdown,
    };
    let mut suite = Suite {
        auth_addr,
        auth_channel: Channel::from_shared(auth_url)?.connect_lazy(),
        auth_db,
        auth_config,
        auth: Some(auth),
        accounts_addr,
        accounts_channel: Channel::from_shared(accounts_url)?.connect_lazy(),
        accounts_db,
        accounts_config,
        accounts: None,
    };
    wait_until_serving(&suite.auth_channel, keel_auth::SERVICE_NAME).await?;
    if options.start_accounts {
        suite.start_accounts_on(accounts_listener).await?;
    }
    Ok(suite)
}

/// A suite with one signed-in user whose UserRegistered event never reaches
/// accounts: the user registers while accounts is down, and the event is then
/// marked delivered in auth's outbox. Whatever accounts knows of the user, it
/// learns on the user's first call.
pub async fn spawn_suite_with_withheld_registration() -> anyhow::Result<(Suite, pb::User, pb::TokenPair)> {
    use diesel::{ExpressionMethods as _, QueryDsl as _};
    use diesel_async::RunQueryDsl as _;
    use keel_platform::outbox::outbox;

    let mut suite = spawn_suite_with_options(SuiteOptions {
        start_accounts: false,
        ..SuiteOptions::default()
    })
    .await?;
    let (user, tokens) = suite.signed_in_user().await?;
    let mut auth = suite.auth_db().await?;
    let withheld = diesel::update(
        outbox::table
            .filter(outbox::published_at.is_null())
            .filter(outbox::event_type.eq("user.registered")),
    )
    .set(outbox::published_at.eq(diesel::dsl::now))
    .execute(&mut auth)
    .await?;
    anyhow::ensure!(withheld == 1, "the user's UserRegistered was not pending");
    suite.start_accounts().await?;
    Ok((suite, user, tokens))
}

impl Suite {
    /// A client for auth.
    pub fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.auth_channel.clone())
    }

    /// A health client for auth.
    pub fn auth_health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.auth_channel.clone())
    }

    /// The channel to auth.
    pub fn auth_channel(&self) -> Channel {
        self.auth_channel.clone()
    }

    /// Where auth listens.
    pub fn auth_addr(&self) -> SocketAddr {
        self.auth_addr
    }

    /// Auth's database.
    pub fn auth_database_url(&self) -> &str {
        self.auth_db.url()
    }

    /// The configuration auth runs with.
    pub fn auth_config(&self) -> &AuthConfig {
        &self.auth_config
    }

    /// A client for accounts.
    pub fn accounts(&self) -> AccountsServiceClient<Channel> {
        AccountsServiceClient::new(self.accounts_channel.clone())
    }

    /// Where accounts listens.
    pub fn accounts_addr(&self) -> SocketAddr {
        self.accounts_addr
    }

    /// The channel to accounts (its AccountsService and EventSink).
    pub fn accounts_channel(&self) -> Channel {
        self.accounts_channel.clone()
    }

    /// Accounts' database.
    pub fn accounts_database_url(&self) -> &str {
        self.accounts_db.url()
    }

    /// Starts accounts (again) on its address.
    pub async fn start_accounts(&mut self) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.accounts_addr).await?;
        self.start_accounts_on(listener).await
    }

    async fn start_accounts_on(&mut self, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        anyhow::ensure!(self.accounts.is_none(), "accounts is already running");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(keel_accounts::run(
            self.accounts_config.clone(),
            self.accounts_db.url().to_owned(),
            listener,
            shutdown.clone(),
        ));
        self.accounts = Some(Running { shutdown, task });
        wait_until_serving(&self.accounts_channel, keel_accounts::SERVICE_NAME).await
    }

    /// Stops accounts and waits for it to exit.
    pub async fn stop_accounts(&mut self) -> anyhow::Result<()> {
        if let Some(running) = self.accounts.take() {
            running.shutdown.cancel();
            running.task.await.context("accounts panicked")??;
        }
        Ok(())
    }

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
        let auth = keel_auth::Auth::build(&self.auth_config, self.auth_db.url()).await?;
        let email = domain::Email::parse(email).map_err(|v| anyhow::anyhow!(v.description))?;
        let password =
            domain::Password::parse("password", password.into()).map_err(|v| anyhow::anyhow!(v.description))?;
        let roles = domain::Roles::new(roles.to_vec()).map_err(|v| anyhow::anyhow!(v.description))?;
        auth.create_user(&email, &password, &roles, None)
            .await
            .map_err(|err| anyhow::anyhow!("{err}"))
    }

    /// A connection of its own to auth's database.
    pub async fn auth_db(&self) -> anyhow::Result<diesel_async::AsyncPgConnection> {
        use diesel_async::AsyncConnection as _;
        Ok(diesel_async::AsyncPgConnection::establish(self.auth_database_url()).await?)
    }

    /// A connection of its own to accounts' database.
    pub async fn accounts_db(&self) -> anyhow::Result<diesel_async::AsyncPgConnection> {
        use diesel_async::AsyncConnection as _;
        Ok(diesel_async::AsyncPgConnection::establish(self.accounts_database_url()).await?)
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

    /// Auth's outbox events of `event_type` (of every type when None),
    /// oldest first.
    pub async fn auth_events(&self, event_type: Option<&str>) -> anyhow::Result<Vec<keel::events::v1::Event>> {
        use diesel::{ExpressionMethods as _, QueryDsl as _};
        use diesel_async::RunQueryDsl as _;
        use keel_platform::outbox::outbox;
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

    /// Stops every service and waits for them to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop_accounts().await?;
        if let Some(running) = self.auth.take() {
            running.shutdown.cancel();
            running.task.await.context("auth panicked")??;
        }
        Ok(())
    }
}

impl Drop for Suite {
    fn drop(&mut self) {
        for running in [self.auth.take(), self.accounts.take()].into_iter().flatten() {
            running.shutdown.cancel();
            running.task.abort();
        }
    }
}

async fn wait_until_serving(channel: &Channel, service: &str) -> anyhow::Result<()> {
    keel_platform::server::wait_until_serving(channel.clone(), service, Duration::from_secs(30)).await
}

/// `message` with `authorization: Bearer <token>`.
pub fn authorized<T>(message: T, access_token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {access_token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}
