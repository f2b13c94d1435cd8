//! Sign-in with external OpenID Providers: auth is the relying party.
//!
//! The authorization code flow with PKCE S256, a `state` bound to the
//! browser that started it and spent once, a `nonce` checked in the ID
//! token, and the RFC 9207 `iss` response parameter checked against the
//! provider (the mix-up defence). [`provider`] talks to one provider
//! (discovery, keys, token endpoint, userinfo) over an HTTP client that
//! follows no redirects; [`id_token`] validates ID tokens with
//! `jsonwebtoken`, the JWT library the rest of Keel verifies with, on the
//! same aws-lc-rs crypto. The flow itself is [`crate::app::providers`].

pub mod id_token;
pub mod provider;
pub mod refusal;
pub mod settings;

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest as _, Sha256};
use url::Url;

use provider::Provider;
use refusal::{ProviderMetrics, Refusal};
use settings::ProviderSettings;

/// The configured providers, and where their answers come back.
#[derive(Debug)]
pub struct Providers {
    by_id: BTreeMap<String, Provider>,
    /// Keel's public URL (the gateway's): callbacks are under it.
    public_base_url: Url,
    /// The application URLs a sign-in may return to, exactly.
    return_urls: Vec<String>,
    /// Outcomes by provider.
    pub metrics: ProviderMetrics,
}

impl Providers {
    /// The providers of `settings`, their callbacks under `public_base_url`,
    /// returning only to `return_urls`.
    pub fn new(
        settings: Vec<ProviderSettings>,
        public_base_url: &str,
        return_urls: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let public_base_url = Url::parse(public_base_url).context("KEEL_PUBLIC_BASE_URL is not a URL")?;
        let return_urls: Vec<String> = return_urls
            .iter()
            .map(|url| url.trim().to_owned())
            .filter(|url| !url.is_empty())
            .collect();
        for url in &return_urls {
            let parsed = Url::parse(url).with_context(|| format!("return URL {url:?} is not a URL"))?;
            anyhow::ensure!(
                parsed.fragment().is_none(),
                "return URL {url:?} has a fragment: the code goes in its query"
            );
        }
        anyhow::ensure!(
            settings.is_empty() || !return_urls.is_empty(),
            "identity providers are configured but KEEL_OIDC_RETURN_URLS is empty: a sign-in would have nowhere to return"
        );
        let http = provider::http_client(timeout)?;
        let by_id = settings
            .into_iter()
            .map(|settings| (settings.id.clone(), Provider::new(settings, http.clone())))
            .collect();
        Ok(Self {
            by_id,
            public_base_url,
            return_urls,
            metrics: ProviderMetrics::default(),
        })
    }

    /// The provider `id`.
    pub fn get(&self, id: &str) -> Result<&Provider, Refusal> {
        self.by_id.get(id).ok_or_else(|| Refusal::unknown_provider(id))
    }

    /// Every provider, by id.
    pub fn all(&self) -> impl Iterator<Item = &ProviderSettings> {
        self.by_id.values().map(|provider| &provider.settings)
    }

    /// Where provider `id` sends the browser back (registered at the
    /// provider exactly so).
    pub fn redirect_uri(&self, id: &str) -> String {
        let base = self.public_base_url.as_str().trim_end_matches('/');
        format!("{base}/v1/auth/providers/{id}/callback")
    }

    /// Refuses a return URL not on the list (compared exactly).
    pub fn check_return_url(&self, url: &str) -> Result<(), Refusal> {
        if self.return_urls.iter().any(|allowed| allowed == url) {
            Ok(())
        } else {
            Err(Refusal::return_url(url))
        }
    }
}

/// The PKCE S256 challenge of `verifier` (RFC 7636 4.2).
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_is_base64url_of_sha256_without_padding() {
        // Computed independently (Python's hashlib and base64).
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWjOEjXk"),
            "VYFANLqdx_HDV6BqEhluZJ63rtrIPROSSFdB3P6G83I"
        );
    }

    #[test]
    fn return_urls_match_exactly_and_callbacks_live_under_the_public_url() {
        let providers = Providers::new(
            Vec::new(),
            "https://api.example.com/",
            &["https://app.example.com/signed-in".into()],
            Duration::from_secs(5),
        )
        .expect("valid");
        assert!(providers.check_return_url("https://app.example.com/signed-in").is_ok());
        assert!(
            providers
                .check_return_url("https://app.example.com/signed-in/")
                .is_err()
        );
        assert!(
            providers
                .check_return_url("https://app.example.com/signed-in?x=1")
                .is_err()
        );
        assert_eq!(
            providers.redirect_uri("corp"),
            "https://api.example.com/v1/auth/providers/corp/callback"
        );
    }
}
