//! Auth's settings: its own clap arguments, with the groups every service
//! takes from platform's [`ServiceArgs`], and what they derive (the
//! throttles, session limits, hashing cost and service clients).

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use clap::{
    Args,
    builder::{StringValueParser, TypedValueParser as _},
};
use keel_platform::{config::ServiceArgs, sealing::SealingKey};
use secrecy::{ExposeSecret as _, SecretString};

use crate::{clients::ServiceClient, password::HashCost};

/// Auth's settings.
#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// Proxies whose `x-forwarded-for` names the client (the gateway's
    /// addresses, comma-separated): login throttling and sessions then see
    /// the real client rather than the proxy.
    #[arg(long, env = "KEEL_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// Services that may get tokens: `client_id:secret:scope scope ...`,
    /// several separated by `;`.
    /// (Parsed by [`AuthConfig::service_clients`], whose errors never repeat
    /// a secret.)
    #[arg(
        long,
        env = "KEEL_SERVICE_CLIENTS",
        value_delimiter = ';',
        hide_env_values = true,
        value_parser = StringValueParser::new().map(SecretString::from)
    )]
    pub service_clients: Vec<SecretString>,

    /// Failed logins allowed per account from one client address (an IPv6
    /// client: its /64) within the window; further attempts from there are
    /// refused until the window ends.
    #[arg(long, env = "KEEL_LOGIN_MAX_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_max_failures: u32,

    /// Failed logins allowed per client address across all accounts within
    /// the window (password spraying).
    #[arg(long, env = "KEEL_LOGIN_MAX_ADDRESS_FAILURES", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_max_address_failures: u32,

    /// The failed-login window (seconds).
    #[arg(long, env = "KEEL_LOGIN_FAILURE_WINDOW_SECS", default_value_t = 900, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_failure_window_secs: u32,

    /// Failures of one account within the window, from all addresses, after
    /// which every address must wait before each further attempt at it (the
    /// account slows down; it is never locked).
    #[arg(long, env = "KEEL_LOGIN_SLOWDOWN_AFTER", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_slowdown_after: u32,

    /// The first such wait (milliseconds); it doubles with each further
    /// failure of the account.
    #[arg(long, env = "KEEL_LOGIN_SLOWDOWN_BASE_MS", default_value_t = 1_000)]
    pub login_slowdown_base_ms: u64,

    /// The longest wait (milliseconds): the most a correct password from an
    /// address that has not failed can be held back.
    #[arg(long, env = "KEEL_LOGIN_SLOWDOWN_MAX_MS", default_value_t = 30_000)]
    pub login_slowdown_max_ms: u64,

    /// Register calls allowed per client address within the call-limit window.
    #[arg(long, env = "KEEL_REGISTER_LIMIT", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub register_limit: u32,

    /// RequestPasswordReset calls allowed per email within the call-limit
    /// window (mails one inbox can be sent).
    #[arg(long, env = "KEEL_PASSWORD_RESET_LIMIT_PER_EMAIL", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub password_reset_limit_per_email: u32,

    /// RequestPasswordReset calls allowed per client address within the
    /// call-limit window.
    #[arg(long, env = "KEEL_PASSWORD_RESET_LIMIT_PER_ADDRESS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub password_reset_limit_per_address: u32,

    /// IssueServiceToken calls allowed per client id and client address within
    /// the call-limit window.
    #[arg(long, env = "KEEL_SERVICE_TOKEN_LIMIT", default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..))]
    pub service_token_limit: u32,

    /// The window of the Register, RequestPasswordReset and IssueServiceToken
    /// limits (seconds).
    #[arg(long, env = "KEEL_CALL_LIMIT_WINDOW_SECS", default_value_t = 3_600, value_parser = clap::value_parser!(u32).range(1..))]
    pub call_limit_window_secs: u32,

    /// The identity providers users may sign in with: a JSON array of
    /// `{"id", "display_name", "issuer", "client_id", "client_secret",
    /// "scopes"}` (see the README's "Sign in with a provider").
    #[arg(long, env = "KEEL_OIDC_PROVIDERS", hide_env_values = true, value_parser = StringValueParser::new().map(SecretString::from))]
    pub oidc_providers: Option<SecretString>,

    /// A file holding the providers' JSON instead.
    #[arg(long, env = "KEEL_OIDC_PROVIDERS_FILE", conflicts_with = "oidc_providers")]
    pub oidc_providers_file: Option<std::path::PathBuf>,

    /// The application URLs a provider sign-in may return to with its
    /// one-time code (exact, comma-separated).
    #[arg(long, env = "KEEL_OIDC_RETURN_URLS", value_delimiter = ',')]
    pub oidc_return_urls: Vec<String>,

    /// How long one call to a provider may take (ms).
    #[arg(long, env = "KEEL_OIDC_TIMEOUT_MS", default_value_t = 10_000)]
    pub oidc_timeout_ms: u64,

    /// Where users reach Keel (the gateway): providers send the browser back
    /// to `<this>/v1/auth/providers/<id>/callback`.
    #[arg(long, env = "KEEL_PUBLIC_BASE_URL", default_value = "http://127.0.0.1:8080")]
    pub public_base_url: String,

    /// How long a user's access token lives (seconds; at most 900). A
    /// shorter life makes clients refresh more often.
    #[arg(long, env = "KEEL_ACCESS_TOKEN_TTL_SECS", default_value_t = 900, value_parser = clap::value_parser!(u32).range(1..=900))]
    pub access_token_ttl_secs: u32,

    /// A session's lifetime from sign-in (seconds); refreshing does not
    /// extend it.
    #[arg(long, env = "KEEL_SESSION_MAX_LIFETIME_SECS", default_value_t = 30 * 86_400, value_parser = clap::value_parser!(u32).range(1..))]
    pub session_max_lifetime_secs: u32,

    /// A session not refreshed for this long ends (seconds).
    #[arg(long, env = "KEEL_SESSION_IDLE_TIMEOUT_SECS", default_value_t = 7 * 86_400, value_parser = clap::value_parser!(u32).range(1..))]
    pub session_idle_timeout_secs: u32,

    /// The key (32 bytes, base64) that seals the one-time tokens in auth's
    /// events for the service that mails them, which holds the same key.
    /// Without it, those events carry no token.
    #[arg(long, env = "KEEL_EVENT_SECRETS_KEY", hide_env_values = true)]
    pub event_secrets_key: Option<SealingKey>,

    /// The key-encryption key (32 bytes, base64) that seals the token signing
    /// keys and the second factors' TOTP secrets in auth's database. Without
    /// it they are stored unencrypted (auth warns at start).
    #[arg(long, env = "KEEL_AUTH_KEY_ENCRYPTION_KEY", hide_env_values = true)]
    pub key_encryption_key: Option<SealingKey>,

    /// The name authenticator apps show beside a user's second factor (the
    /// issuer of its `otpauth://` URI); no colon.
    #[arg(long, env = "KEEL_TOTP_ISSUER", default_value = "Keel")]
    pub totp_issuer: String,

    /// argon2id memory cost (KiB); never below OWASP's 19456.
    #[arg(long, env = "KEEL_ARGON2_MEMORY_KIB", default_value_t = 19_456)]
    pub argon2_memory_kib: u32,

    /// argon2id passes; never below 2.
    #[arg(long, env = "KEEL_ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,

    /// Password hashes computed at once (default: one per CPU).
    #[arg(long, env = "KEEL_HASH_CONCURRENCY")]
    pub hash_concurrency: Option<usize>,

    #[command(flatten)]
    pub service: ServiceArgs,
}

impl AuthConfig {
    /// Parses `args` (the first is the program name), with the environment
    /// filling in what they leave out.
    pub fn from_args<'a>(args: impl IntoIterator<Item = &'a str>) -> anyhow::Result<Self> {
        keel_platform::config::from_args(args)
    }

    /// The configured service clients, and `extra` ones (see
    /// [`keel_platform::registry::Context::suite_clients`]).
    pub fn service_clients(&self, extra: &[SecretString]) -> anyhow::Result<Vec<ServiceClient>> {
        self.service_clients
            .iter()
            .chain(extra)
            .map(|spec| spec.expose_secret())
            .filter(|spec| !spec.trim().is_empty())
            .map(|spec| {
                spec.parse()
                    .map_err(|err| anyhow::anyhow!("KEEL_SERVICE_CLIENTS: {err}"))
            })
            .collect()
    }

    /// The identity providers, read from the JSON or its file.
    pub fn identity_providers(&self) -> anyhow::Result<crate::oidc::Providers> {
        use anyhow::Context as _;
        let json = match (&self.oidc_providers, &self.oidc_providers_file) {
            (Some(json), _) => json.expose_secret().to_owned(),
            (None, Some(path)) => {
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
            }
            (None, None) => String::new(),
        };
        crate::oidc::Providers::new(
            crate::oidc::settings::parse(&json)?,
            &self.public_base_url,
            &self.oidc_return_urls,
            StdDuration::from_millis(self.oidc_timeout_ms),
        )
    }

    /// The failed-login throttle.
    pub fn login_throttle(&self) -> LoginThrottle {
        LoginThrottle {
            max_failures: int(self.login_max_failures),
            max_address_failures: int(self.login_max_address_failures),
            slowdown_after: int(self.login_slowdown_after),
            slowdown_base: StdDuration::from_millis(self.login_slowdown_base_ms),
            slowdown_max: StdDuration::from_millis(self.login_slowdown_max_ms),
            window: StdDuration::from_secs(u64::from(self.login_failure_window_secs)),
        }
    }

    /// The limits of Register, RequestPasswordReset and IssueServiceToken.
    pub fn call_limits(&self) -> CallLimits {
        CallLimits {
            register_per_address: int(self.register_limit),
            reset_per_email: int(self.password_reset_limit_per_email),
            reset_per_address: int(self.password_reset_limit_per_address),
            service_token_per_client: int(self.service_token_limit),
            window: StdDuration::from_secs(u64::from(self.call_limit_window_secs)),
        }
    }

    /// How long sessions last.
    pub fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            max_lifetime: Duration::seconds(i64::from(self.session_max_lifetime_secs)),
            idle_timeout: Duration::seconds(i64::from(self.session_idle_timeout_secs)),
        }
    }

    /// The argon2id cost, refusing anything weaker than OWASP's minimum.
    pub fn hash_cost(&self) -> anyhow::Result<HashCost> {
        let minimum = HashCost::default();
        anyhow::ensure!(
            self.argon2_memory_kib >= minimum.memory_kib && self.argon2_iterations >= minimum.iterations,
            "argon2id cost below m={} KiB, t={} is not allowed",
            minimum.memory_kib,
            minimum.iterations
        );
        Ok(HashCost {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
            parallelism: 1,
        })
    }

    /// Password hashes computed at once: as configured, or one per CPU.
    pub fn hash_concurrency(&self) -> usize {
        self.hash_concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
    }
}

/// A count setting as the counters store it.
fn int(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// How failed logins are limited.
#[derive(Debug, Clone, Copy)]
pub struct LoginThrottle {
    /// Failures allowed per account and client address within the window;
    /// further attempts from there are refused until it ends.
    pub max_failures: i32,
    /// Failures allowed per client address across accounts (password
    /// spraying) within the window.
    pub max_address_failures: i32,
    /// Failures of an account, from all addresses, before each address must
    /// wait between its attempts at it.
    pub slowdown_after: i32,
    /// The first wait; it doubles with every further failure...
    pub slowdown_base: StdDuration,
    /// ...up to this.
    pub slowdown_max: StdDuration,
    /// The counting window.
    pub window: StdDuration,
}

impl LoginThrottle {
    /// How long an address must wait before each attempt at an account with
    /// `failures` failures in the window: nothing below `slowdown_after`, then
    /// `slowdown_base` doubling per failure, at most `slowdown_max`.
    pub fn delay(&self, failures: i32) -> Option<StdDuration> {
        let beyond = u32::try_from(failures.checked_sub(self.slowdown_after)?).ok()?;
        let factor = 1_u32 << beyond.min(20);
        Some(
            self.slowdown_base
                .checked_mul(factor)
                .map_or(self.slowdown_max, |delay| delay.min(self.slowdown_max)),
        )
    }
}

/// Limits on calls per window that cost a hash, a signature or a mail.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// Register calls per client address.
    pub register_per_address: i32,
    /// RequestPasswordReset calls per email (mails to one inbox).
    pub reset_per_email: i32,
    /// RequestPasswordReset calls per client address.
    pub reset_per_address: i32,
    /// IssueServiceToken calls per client id and address.
    pub service_token_per_client: i32,
    /// The counting window.
    pub window: StdDuration,
}

/// How long a session (a sign-in and its refresh tokens) may last.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// From sign-in; refreshing does not extend it.
    pub max_lifetime: Duration,
    /// A session not refreshed for this long ends.
    pub idle_timeout: Duration,
}

impl SessionLimits {
    /// When a session that signed in at `signed_in` ends if it is not used
    /// again after `now`: its refresh token expires then too.
    pub fn expiry(&self, signed_in: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
        (now + self.idle_timeout).min(signed_in + self.max_lifetime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> LoginThrottle {
        LoginThrottle {
            max_failures: 5,
            max_address_failures: 20,
            slowdown_after: 10,
            slowdown_base: StdDuration::from_secs(1),
            slowdown_max: StdDuration::from_secs(30),
            window: StdDuration::from_secs(900),
        }
    }

    #[test]
    fn the_delay_doubles_from_the_threshold_up_to_the_cap() {
        let t = throttle();
        assert_eq!(t.delay(9), None);
        assert_eq!(t.delay(10), Some(StdDuration::from_secs(1)));
        assert_eq!(t.delay(11), Some(StdDuration::from_secs(2)));
        assert_eq!(t.delay(14), Some(StdDuration::from_secs(16)));
        assert_eq!(t.delay(15), Some(StdDuration::from_secs(30)));
        assert_eq!(t.delay(i32::MAX), Some(StdDuration::from_secs(30)));
    }

    #[test]
    fn service_client_secrets_stay_out_of_debug() -> anyhow::Result<()> {
        let config = AuthConfig::from_args([
            "keel",
            "--service-clients",
            "orders:0123456789abcdef0123:accounts.debit;billing:fedcba9876543210fedc:",
        ])?;
        let shown = format!("{config:?}");
        assert!(!shown.contains("0123456789abcdef0123"), "{shown}");
        assert!(!shown.contains("fedcba9876543210fedc"), "{shown}");
        let clients = config.service_clients(&["extra:abcdefabcdefabcdefab:events.deliver".into()])?;
        let ids: Vec<&str> = clients.iter().map(|client| client.id.as_str()).collect();
        assert_eq!(ids, ["orders", "billing", "extra"]);
        assert!(!format!("{clients:?}").contains("abcdefabcdefabcdefab"));
        Ok(())
    }
}
