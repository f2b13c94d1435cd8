//! Who is calling: the claims inside an access token, and the `Principal`
//! that the token verifier puts into each request.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;

/// The claims of every Keel access token (user or service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: the auth service's configured name.
    pub iss: String,
    /// Audience: the suite's configured name.
    pub aud: String,
    /// Subject: a user id, or `service:<client id>`.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// A unique token id.
    pub jti: String,
    /// A user's roles (`user`, `admin`); empty for services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The session of a user token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// A service token's scopes, space-separated (RFC 8693).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// The prefix of a service token's subject.
pub const SERVICE_SUBJECT_PREFIX: &str = "service:";

/// A role a user holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// An end user.
    User,
    /// An administrator.
    Admin,
}

impl Role {
    /// The name used in tokens and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A person, with an access token from Login or Refresh.
    User(UserPrincipal),
    /// A service, with a token from IssueServiceToken.
    Service(ServicePrincipal),
}

/// A verified user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPrincipal {
    /// The user's id.
    pub user_id: Uuid,
    /// The session the token belongs to.
    pub session_id: Uuid,
    /// The user's roles when the token was issued.
    pub roles: Vec<Role>,
}

/// A verified service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePrincipal {
    /// The service's client id.
    pub client_id: String,
    /// What the service may do.
    pub scopes: Vec<String>,
}

/// The token subject: `user:<id>` (with the session) or `service:<client id>`,
/// as logs name a caller.
impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::User(user) => write!(f, "user:{} session:{}", user.user_id, user.session_id),
            Principal::Service(service) => write!(f, "{SERVICE_SUBJECT_PREFIX}{}", service.client_id),
        }
    }
}

impl Principal {
    /// Reads a principal from verified claims.
    pub fn from_claims(claims: &Claims) -> Result<Self, Error> {
        let malformed = || Error::unauthenticated("INVALID_TOKEN", "the access token is malformed");
        if let Some(client_id) = claims.sub.strip_prefix(SERVICE_SUBJECT_PREFIX) {
            let scopes = claims
                .scope
                .as_deref()
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            return Ok(Principal::Service(ServicePrincipal {
                client_id: client_id.to_owned(),
                scopes,
            }));
        }
        let user_id = Uuid::parse_str(&claims.sub).map_err(|_| malformed())?;
        let session_id = claims
            .sid
            .as_deref()
            .and_then(|sid| Uuid::parse_str(sid).ok())
            .ok_or_else(malformed)?;
        let roles = claims.roles.iter().filter_map(|r| Role::parse(r)).collect();
        Ok(Principal::User(UserPrincipal {
            user_id,
            session_id,
            roles,
        }))
    }

    /// The calling user, or PERMISSION_DENIED for a service.
    pub fn user(&self) -> Result<&UserPrincipal, Error> {
        match self {
            Principal::User(user) => Ok(user),
            Principal::Service(_) => Err(Error::permission_denied(
                "USER_TOKEN_REQUIRED",
                "this call needs a user's access token",
            )),
        }
    }

    /// The calling administrator, or PERMISSION_DENIED.
    pub fn admin(&self) -> Result<&UserPrincipal, Error> {
        let user = self.user()?;
        if user.is_admin() {
            Ok(user)
        } else {
            Err(Error::permission_denied(
                "ADMIN_REQUIRED",
                "this call needs the admin role",
            ))
        }
    }

    /// The calling service if it holds `scope`, or PERMISSION_DENIED.
    pub fn service_with_scope(&self, scope: &str) -> Result<&ServicePrincipal, Error> {
        match self {
            Principal::Service(service) if service.scopes.iter().any(|s| s == scope) => Ok(service),
            _ => Err(Error::permission_denied(
                "SCOPE_REQUIRED",
                format!("this call needs a service token with scope {scope}"),
            )),
        }
    }
}

impl UserPrincipal {
    /// Whether the user holds the admin role.
    pub fn is_admin(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }
}

/// The verified caller of a request, or UNAUTHENTICATED.
pub fn principal<T>(request: &tonic::Request<T>) -> Result<&Principal, Error> {
    request
        .extensions()
        .get::<Principal>()
        .ok_or_else(|| Error::unauthenticated("MISSING_TOKEN", "this call needs an access token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str) -> Claims {
        Claims {
            iss: "keel-auth".into(),
            aud: "keel".into(),
            sub: sub.into(),
            exp: 0,
            iat: 0,
            jti: "j".into(),
            roles: vec!["user".into(), "admin".into()],
            sid: Some(Uuid::now_v7().to_string()),
            scope: Some("accounts.debit events.deliver".into()),
        }
    }

    #[test]
    fn service_subjects_become_services_with_scopes() {
        let principal = Principal::from_claims(&claims("service:orders")).expect("valid");
        let service = principal.service_with_scope("accounts.debit").expect("scoped");
        assert_eq!(service.client_id, "orders");
        assert!(principal.service_with_scope("accounts.deposit").is_err());
        assert!(principal.user().is_err());
    }

    #[test]
    fn user_subjects_must_be_uuids_with_a_session() {
        let id = Uuid::now_v7();
        let principal = Principal::from_claims(&claims(&id.to_string())).expect("valid");
        assert_eq!(principal.admin().expect("admin").user_id, id);
        assert!(Principal::from_claims(&claims("not-a-uuid")).is_err());
        let mut no_session = claims(&id.to_string());
        no_session.sid = None;
        assert!(Principal::from_claims(&no_session).is_err());
    }
}
