//! The providers an operator configures: `KEEL_OIDC_PROVIDERS` (or the file
//! `KEEL_OIDC_PROVIDERS_FILE` names), a JSON array of
//! `{"id", "display_name", "issuer", "client_id", "client_secret", "scopes"}`.

use std::collections::BTreeSet;

use anyhow::{Context as _, bail};
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

/// One provider, checked.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// Its id in Keel's URLs (`/v1/auth/providers/{id}/…`): lowercase
    /// letters, digits and `-`.
    pub id: String,
    /// What a sign-in page shows.
    pub display_name: String,
    /// The issuer URL, exactly as its ID tokens' `iss` says.
    pub issuer: Url,
    /// Keel's client id at the provider.
    pub client_id: String,
    /// Keel's client secret at the provider.
    pub client_secret: SecretString,
    /// The scopes asked for; `openid` is always among them.
    pub scopes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    id: String,
    display_name: Option<String>,
    issuer: String,
    client_id: String,
    client_secret: String,
    #[serde(default)]
    scopes: Vec<String>,
}

/// Parses the providers' JSON (an empty text: none). Errors name the
/// provider and field, never a secret.
pub fn parse(json: &str) -> anyhow::Result<Vec<ProviderSettings>> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let raw: Vec<Raw> = serde_json::from_str(json).map_err(|err| {
        anyhow::anyhow!(
            "KEEL_OIDC_PROVIDERS is not a JSON array of providers (line {}, column {})",
            err.line(),
            err.column()
        )
    })?;
    let mut ids = BTreeSet::new();
    raw.into_iter()
        .map(|raw| {
            let id = raw.id;
            if id.is_empty()
                || id.len() > 32
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                bail!("provider id {id:?} must be 1 to 32 lowercase letters, digits or '-'");
            }
            if !ids.insert(id.clone()) {
                bail!("provider {id:?} is configured twice");
            }
            let issuer = Url::parse(&raw.issuer).with_context(|| format!("provider {id:?}: issuer is not a URL"))?;
            if !secure_or_loopback(&issuer) {
                bail!("provider {id:?}: the issuer must be https (http only on loopback, for local trials)");
            }
            if raw.client_id.is_empty() || raw.client_secret.is_empty() {
                bail!("provider {id:?}: client_id and client_secret are required");
            }
            let mut scopes = vec!["openid".to_owned()];
            for scope in raw.scopes {
                if scope.is_empty() || scope.contains(char::is_whitespace) {
                    bail!("provider {id:?}: scope {scope:?} is not a scope token");
                }
                if !scopes.contains(&scope) {
                    scopes.push(scope);
                }
            }
            Ok(ProviderSettings {
                display_name: raw.display_name.unwrap_or_else(|| id.clone()),
                id,
                // Kept exactly as written: `iss` is compared as a string.
                issuer,
                client_id: raw.client_id,
                client_secret: raw.client_secret.into(),
                scopes,
            })
        })
        .collect()
}

/// Whether `url` is https, or http to a loopback host.
pub fn secure_or_loopback(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => match url.host() {
            Some(url::Host::Domain(host)) => host == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_are_parsed_and_checked() {
        let parsed = parse(
            r#"[{"id":"corp","issuer":"https://id.example.com","client_id":"keel","client_secret":"s3cret","scopes":["email","openid"]}]"#,
        )
        .expect("valid");
        assert_eq!(parsed[0].scopes, ["openid", "email"]);
        assert_eq!(parsed[0].display_name, "corp");
        assert!(parse("").expect("none").is_empty());
        let insecure = parse(r#"[{"id":"x","issuer":"http://id.example.com","client_id":"a","client_secret":"b"}]"#);
        assert!(insecure.is_err());
        let local = parse(r#"[{"id":"x","issuer":"http://127.0.0.1:9000","client_id":"a","client_secret":"b"}]"#);
        assert!(local.is_ok());
        let twice = r#"[{"id":"x","issuer":"https://a","client_id":"a","client_secret":"b"},{"id":"x","issuer":"https://b","client_id":"a","client_secret":"b"}]"#;
        let err = parse(twice).expect_err("twice").to_string();
        assert!(err.contains("twice") && !err.contains("\"b\""), "{err}");
    }
}
