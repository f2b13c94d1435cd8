//! Typed shortcuts to auth and accounts: clients, channels, addresses,
//! settings and database connections.

use std::net::SocketAddr;

use keel::{
    accounts::v1::accounts_service_client::AccountsServiceClient, auth::v1::auth_service_client::AuthServiceClient,
};
use keel_auth::AuthConfig;
use keel_platform::registry;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

use super::Suite;

impl Suite {
    /// A client for auth.
    pub fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.auth_channel())
    }

    /// A health client for auth.
    pub fn auth_health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.auth_channel())
    }

    /// The channel to auth.
    pub fn auth_channel(&self) -> Channel {
        self.channel(registry::AUTH)
    }

    /// Where auth listens.
    pub fn auth_addr(&self) -> SocketAddr {
        self.addr(registry::AUTH)
    }

    /// Auth's database.
    pub fn auth_database_url(&self) -> &str {
        self.database_url(registry::AUTH)
    }

    /// The configuration auth runs with.
    pub fn auth_config(&self) -> &AuthConfig {
        &self.auth_config
    }

    /// A client for accounts.
    pub fn accounts(&self) -> AccountsServiceClient<Channel> {
        AccountsServiceClient::new(self.accounts_channel())
    }

    /// Where accounts listens.
    pub fn accounts_addr(&self) -> SocketAddr {
        self.addr(keel_accounts::SERVICE.name)
    }

    /// The channel to accounts (its AccountsService and EventSink).
    pub fn accounts_channel(&self) -> Channel {
        self.channel(keel_accounts::SERVICE.name)
    }

    /// Accounts' database.
    pub fn accounts_database_url(&self) -> &str {
        self.database_url(keel_accounts::SERVICE.name)
    }

    /// Starts accounts (again) on its address.
    pub async fn start_accounts(&mut self) -> anyhow::Result<()> {
        self.start(keel_accounts::SERVICE.name).await
    }

    /// Stops accounts and waits for it to exit.
    pub async fn stop_accounts(&mut self) -> anyhow::Result<()> {
        self.stop_service(keel_accounts::SERVICE.name).await
    }

    /// A connection of its own to auth's database.
    pub async fn auth_db(&self) -> anyhow::Result<diesel_async::AsyncPgConnection> {
        self.db(registry::AUTH).await
    }

    /// A connection of its own to accounts' database.
    pub async fn accounts_db(&self) -> anyhow::Result<diesel_async::AsyncPgConnection> {
        self.db(keel_accounts::SERVICE.name).await
    }
}
