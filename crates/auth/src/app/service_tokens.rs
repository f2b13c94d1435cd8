//! Tokens for services (OAuth 2.0 client credentials), and the keys that
//! verify every token.

use chrono::{DateTime, Utc};
use keel::auth::v1::Jwk;
use keel_platform::{Error, auth::principal::SERVICE_SUBJECT_PREFIX, serve::audit};
use secrecy::{ExposeSecret as _, SecretString};

use super::{Auth, ClientInfo, throttle::address_key};

/// A token issued to a service client.
#[derive(Debug, Clone)]
pub struct ServiceToken {
    /// The signed access token (a JWT).
    pub access_token: SecretString,
    /// When it expires.
    pub expires: DateTime<Utc>,
    /// The scopes it carries.
    pub scopes: Vec<String>,
}

impl Auth {
    /// A token for service client `client_id`, if `secret` is its secret,
    /// with the `scopes` asked for (every scope it may have when none are).
    /// Calls per client id and address are limited.
    pub async fn issue_service_token(
        &self,
        client_id: &str,
        secret: &SecretString,
        scopes: &[String],
        client: &ClientInfo,
    ) -> Result<ServiceToken, Error> {
        // Per client id and address: a service's own replicas are not held back
        // by someone else presenting its (public) id with wrong secrets. Unknown
        // ids share one count per address.
        let id = match self.clients.knows(client_id) {
            true => client_id,
            false => "?",
        };
        // A refusal's log names the client (an unknown id, chosen by the caller,
        // is not repeated).
        audit::record_subject(&format_args!("{SERVICE_SUBJECT_PREFIX}{id}"));
        self.limit_calls(
            &mut *self.pool.get().await?,
            &[(
                format!("service_token:{id}@{}", address_key(client.address)),
                self.call_limits.service_token_per_client,
            )],
        )
        .await?;
        let service = self
            .clients
            .authenticate(client_id, secret.expose_secret())
            .ok_or_else(|| Error::unauthenticated("INVALID_CLIENT", "unknown client id or wrong secret"))?;
        let scopes = service.grant(scopes).map_err(|scope| {
            Error::permission_denied(
                "SCOPE_NOT_ALLOWED",
                format!("client {} may not have scope {scope}", service.id),
            )
        })?;
        let (token, expires) = self.keys.service_token(&service.id, &scopes).await?;
        Ok(ServiceToken {
            access_token: token.into(),
            expires,
            scopes,
        })
    }

    /// The published keys that verify auth's tokens, newest first.
    pub async fn jwks(&self) -> Vec<Jwk> {
        self.keys.jwks().await
    }
}
