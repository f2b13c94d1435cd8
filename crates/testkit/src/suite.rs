//! The whole suite in-process: every service on port 0 against its own fresh
//! database, with typed clients and helpers for the usual first steps.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use keel::auth::v1::{self as pb, auth_service_client::AuthServiceClient};
use keel_auth::{AuthConfig, domain, store::UserRow};
use keel_platform::Role;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::database::{Schema, TestDatabase};

/// The service client every suite configures on auth.
pub const TEST_CLIENT_ID: &str = "test-relay";
/// Its secret.
pub const TEST_CLIENT_SECRET: &str = "test-relay-secret-0123456789";
/// Its scopes.
pub const TEST_CLIENT_SCOPES: &str = "events.deliver accounts.deposit accounts.debit accounts.refund";

/// The auth schema.
pub const AUTH_SCHEMA: Schema = Schema {
    name: "auth",
    migrations: || keel_auth::MIGRATIONS,
    dir: keel_auth::MIGRATIONS_DIR,
};

/// A running suite; dropping it shuts every service down.
#[derive(Debug)]
pub struct Suite {
    auth_addr: SocketAddr,
    auth_channel: Channel,
    auth_db: TestDatabase,
    auth_config: AuthConfig,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

/// Starts the suite with default settings.
pub async fn spawn_suite() -> anyhow::Result<Suite> {
    spawn_suite_with(&[]).await
}

/// Starts the suite; `auth_args` are extra `keel serve auth` flags.
pub async fn spawn_suite_with(auth_args: &[&str]) -> anyhow::Result<Suite> {
    let auth_db = TestDatabase::create(AUTH_SCHEMA).await?;
    let clients = format!("{TEST_CLIENT_ID}:{TEST_CLIENT_SECRET}:{TEST_CLIENT_SCOPES}");
    let args = ["keel", "--service-clients", &clients, "--db-pool-size", "8"]
        .into_iter()
        .chain(auth_args.iter().copied());
    let auth_config = AuthConfig::from_args(args).context("auth test flags")?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let auth_addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(keel_auth::run(
        auth_config.clone(),
        auth_db.url().to_owned(),
        listener,
        shutdown.clone(),
    ));
    let auth_channel = Channel::from_shared(format!("http://{auth_addr}"))?.connect_lazy();
    let suite = Suite {
        auth_addr,
        auth_channel,
        auth_db,
        auth_config,
        shutdown,
        tasks: vec![task],
    };
    suite.wait_until_serving().await?;
    Ok(suite)
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

    /// Stops every service and waits for them to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            task.await.context("a service panicked")??;
        }
        Ok(())
    }

    async fn wait_until_serving(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let status = self
                .auth_health()
                .check(HealthCheckRequest {
                    service: keel_auth::SERVICE_NAME.into(),
                })
                .await
                .map(|r| r.into_inner().status)
                .map_err(|status| status.code());
            if status == Ok(ServingStatus::Serving as i32) {
                return Ok(());
            }
            if let Some(task) = self.tasks.iter().find(|t| t.is_finished()) {
                anyhow::bail!("a service exited while starting ({task:?})");
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "auth did not become SERVING: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Suite {
    fn drop(&mut self) {
        self.shutdown.cancel();
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
