//! Services that may ask for tokens (OAuth 2.0 client credentials), as
//! configured: `client_id:secret:scope scope ...`, several separated by `;`.

use std::str::FromStr;

use secrecy::{ExposeSecret as _, SecretSlice};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// One configured service client. Its `Debug` shows no secret.
#[derive(Debug, Clone)]
pub struct ServiceClient {
    /// The client id, e.g. `orders`.
    pub id: String,
    /// The SHA-256 of its secret.
    secret_hash: SecretSlice<u8>,
    /// The scopes it may be granted.
    pub scopes: Vec<String>,
}

impl ServiceClient {
    /// A client with a plain-text secret (hashed at once).
    pub fn new(id: &str, secret: &str, scopes: &[&str]) -> Self {
        ServiceClient {
            id: id.to_owned(),
            secret_hash: Sha256::digest(secret.as_bytes()).to_vec().into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The scopes to grant for a request: all allowed ones when none are
    /// asked for; otherwise the asked ones, or the first one not allowed.
    pub fn grant(&self, asked: &[String]) -> Result<Vec<String>, String> {
        if asked.is_empty() {
            return Ok(self.scopes.clone());
        }
        match asked.iter().find(|scope| !self.scopes.contains(scope)) {
            Some(denied) => Err(denied.clone()),
            None => Ok(asked.to_vec()),
        }
    }
}

impl FromStr for ServiceClient {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut parts = spec.trim().splitn(3, ':');
        let (Some(id), Some(secret), Some(scopes)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("a client is written client_id:secret:scope scope ...".into());
        };
        if id.is_empty() || secret.len() < 16 {
            return Err(format!(
                "client {id:?}: needs an id and a secret of at least 16 characters"
            ));
        }
        let scopes: Vec<&str> = scopes.split_whitespace().collect();
        Ok(ServiceClient::new(id, secret, &scopes))
    }
}

/// Every configured client.
#[derive(Debug, Clone, Default)]
pub struct ServiceClients(Vec<ServiceClient>);

impl ServiceClients {
    /// The clients in `list`.
    pub fn new(list: Vec<ServiceClient>) -> Self {
        ServiceClients(list)
    }

    /// Whether a client with this id is configured.
    pub fn knows(&self, id: &str) -> bool {
        self.0.iter().any(|client| client.id == id)
    }

    /// The client with these credentials, comparing secrets in constant time.
    pub fn authenticate(&self, id: &str, secret: &str) -> Option<&ServiceClient> {
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        self.0
            .iter()
            .find(|client| client.id == id)
            .filter(|client| bool::from(client.secret_hash.expose_secret().ct_eq(&presented[..])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_authenticates() {
        let client: ServiceClient = "orders:0123456789abcdef0123:accounts.debit accounts.refund"
            .parse()
            .expect("valid");
        let clients = ServiceClients::new(vec![client]);
        assert!(clients.authenticate("orders", "0123456789abcdef0123").is_some());
        assert!(clients.authenticate("orders", "wrong-secret-0123456").is_none());
        assert!(clients.authenticate("billing", "0123456789abcdef0123").is_none());
        let orders = clients.authenticate("orders", "0123456789abcdef0123").expect("known");
        assert_eq!(
            orders.grant(&[]).ok(),
            Some(vec!["accounts.debit".into(), "accounts.refund".into()])
        );
        assert_eq!(
            orders.grant(&["accounts.deposit".into()]).err(),
            Some("accounts.deposit".into())
        );
    }

    #[test]
    fn refuses_weak_specs() {
        assert!("orders:short:accounts.debit".parse::<ServiceClient>().is_err());
        assert!("orders".parse::<ServiceClient>().is_err());
    }
}
