//! Notifications' settings: its own clap arguments (where mail links
//! point, the keys it opens and seals secrets with, how mail and webhooks
//! leave, how deliveries and live streams pace themselves), with the groups
//! every service takes from platform's [`ServiceArgs`].

use std::{path::PathBuf, time::Duration};

use clap::Args;
use keel_platform::{config::ServiceArgs, sealing::SealingKey};
use secrecy::SecretString;

/// Notifications' settings.
#[derive(Debug, Clone, Args)]
pub struct NotificationsConfig {
    /// Where users reach Keel (the gateway's public URL): the links in mail
    /// (email verification, unsubscribe) start with it.
    #[arg(long, env = "KEEL_PUBLIC_BASE_URL", default_value = "http://127.0.0.1:8080")]
    pub public_base_url: String,

    /// The link a password-reset mail offers, `{token}` standing for the
    /// token (your application's reset page). Unset, the mail gives the token
    /// and the ResetPassword call to send it with.
    #[arg(long, env = "KEEL_NOTIFICATIONS_PASSWORD_RESET_LINK")]
    pub password_reset_link: Option<String>,

    /// The key (32 bytes, base64) auth seals one-time tokens in events with;
    /// notifications opens them to mail them.
    #[arg(long, env = "KEEL_EVENT_SECRETS_KEY", hide_env_values = true)]
    pub event_secrets_key: Option<SealingKey>,

    /// The key (32 bytes, base64) that seals webhook signing secrets in the
    /// database. Without it they are stored as they are (a warning at start).
    #[arg(long, env = "KEEL_NOTIFICATIONS_SECRETS_KEY", hide_env_values = true)]
    pub secrets_key: Option<SealingKey>,

    #[command(flatten)]
    pub email: EmailConfig,

    #[command(flatten)]
    pub webhooks: WebhookConfig,

    #[command(flatten)]
    pub delivery: DeliveryConfig,

    #[command(flatten)]
    pub inbox: InboxConfig,

    #[command(flatten)]
    pub service: ServiceArgs,
}

/// How mail leaves.
#[derive(Debug, Clone, Args)]
pub struct EmailConfig {
    /// The SMTP server: `smtps://user:pass@host:465` (implicit TLS),
    /// `smtp://user:pass@host:587?tls=required` (STARTTLS) or
    /// `smtp://host:25` (no TLS, for a local relay).
    #[arg(long, env = "KEEL_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<SecretString>,

    /// Without an SMTP server, each mail is written here as an `.eml` file
    /// (`keel up` points it at its data folder).
    #[arg(long, env = "KEEL_NOTIFICATIONS_MAIL_DIR")]
    pub mail_dir: Option<PathBuf>,

    /// The sender of every mail.
    #[arg(
        long,
        env = "KEEL_NOTIFICATIONS_MAIL_FROM",
        default_value = "Keel <no-reply@keel.localhost>"
    )]
    pub mail_from: String,

    /// How long one message may take to send, connecting included (ms).
    #[arg(long, env = "KEEL_SMTP_TIMEOUT_MS", default_value_t = 30_000)]
    pub smtp_timeout_ms: u64,
}

impl EmailConfig {
    /// The per-message timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.smtp_timeout_ms.max(1))
    }
}

/// How webhooks are sent.
#[derive(Debug, Clone, Args)]
pub struct WebhookConfig {
    /// Allow endpoint URLs that resolve to loopback, private, link-local or
    /// metadata addresses, and plain `http://` (local development and tests
    /// only: it lets users make Keel call into its own network).
    #[arg(long, env = "KEEL_NOTIFICATIONS_WEBHOOK_ALLOW_PRIVATE", default_value_t = false,
          action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,

    /// How long one attempt may take, connecting and reading the answer
    /// included: the longest an endpoint holds a worker per delivery (ms).
    #[arg(long, env = "KEEL_NOTIFICATIONS_WEBHOOK_TIMEOUT_MS", default_value_t = 15_000)]
    pub webhook_timeout_ms: u64,

    /// Multiplies the retry schedule (immediately, 5 s, 5 min, 30 min, 2 h,
    /// 5 h, 10 h, 10 h): 0.001 turns hours into seconds for tests.
    #[arg(long, env = "KEEL_NOTIFICATIONS_WEBHOOK_RETRY_SCALE", default_value_t = 1.0)]
    pub webhook_retry_scale: f64,

    /// An endpoint whose every delivery failed for this long is disabled and
    /// its owner told in the inbox (seconds; 5 days).
    #[arg(
        long,
        env = "KEEL_NOTIFICATIONS_WEBHOOK_DISABLE_AFTER_SECS",
        default_value_t = 432_000
    )]
    pub webhook_disable_after_secs: u64,
}

impl WebhookConfig {
    /// The per-delivery timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.webhook_timeout_ms.max(1))
    }

    /// How long an endpoint may fail before it is disabled.
    pub fn disable_after(&self) -> Duration {
        Duration::from_secs(self.webhook_disable_after_secs)
    }
}

/// How the delivery workers pace themselves.
#[derive(Debug, Clone, Args)]
pub struct DeliveryConfig {
    /// How long a worker holds a claimed delivery; another replica retries
    /// it once the hold ends, so it must exceed the send timeouts (ms).
    #[arg(long, env = "KEEL_NOTIFICATIONS_DELIVERY_LEASE_MS", default_value_t = 60_000)]
    pub delivery_lease_ms: u64,

    /// How often the workers look for due deliveries when no NOTIFY wakes
    /// them (ms).
    #[arg(long, env = "KEEL_NOTIFICATIONS_DELIVERY_POLL_MS", default_value_t = 1_000)]
    pub delivery_poll_ms: u64,

    /// How many mails one process sends at once. Mail has workers of its
    /// own, so webhooks can't hold it up (nor it them).
    #[arg(long, env = "KEEL_NOTIFICATIONS_EMAIL_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub email_concurrency: u32,

    /// How many webhooks one process sends at once. A worker takes the next
    /// due delivery as soon as it is free; none waits for another's answer.
    #[arg(long, env = "KEEL_NOTIFICATIONS_WEBHOOK_CONCURRENCY", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub webhook_concurrency: u32,

    /// How many deliveries one webhook endpoint may have in flight at once,
    /// across every replica: the rest of its queue waits for it, and no one
    /// else's does.
    #[arg(long, env = "KEEL_NOTIFICATIONS_WEBHOOK_ENDPOINT_CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub webhook_endpoint_concurrency: u32,

    /// How many of one process's webhook workers endpoints that are failing
    /// (their last attempt failed) may hold at once; the others stay free
    /// for endpoints that answer, however many endpoints are down.
    #[arg(long, env = "KEEL_NOTIFICATIONS_WEBHOOK_FAILING_CONCURRENCY", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub webhook_failing_concurrency: u32,

    /// The most attempts at one mail before it is dead-lettered.
    #[arg(long, env = "KEEL_NOTIFICATIONS_EMAIL_MAX_ATTEMPTS", default_value_t = 8,
          value_parser = clap::value_parser!(i32).range(1..=100))]
    pub email_max_attempts: i32,

    /// The first email retry's delay; each later one doubles it, with
    /// jitter, up to an hour (ms).
    #[arg(long, env = "KEEL_NOTIFICATIONS_EMAIL_RETRY_BASE_MS", default_value_t = 5_000)]
    pub email_retry_base_ms: u64,

    /// How long finished deliveries (delivered, or dropped because their
    /// endpoint went away) are kept before they are deleted (seconds; dead
    /// letters stay until redelivered).
    #[arg(long, env = "KEEL_NOTIFICATIONS_DELIVERY_RETENTION_SECS", default_value_t = 604_800)]
    pub delivery_retention_secs: u64,

    /// Test hook: the delivery workers stop at this point as if the process
    /// died there. Never set it in production.
    #[arg(
        long,
        env = "KEEL_NOTIFICATIONS_TEST_CRASH_AFTER",
        value_enum,
        default_value = "never",
        hide = true
    )]
    pub test_crash_after: CrashPoint,
}

/// Where the test hook [`DeliveryConfig::test_crash_after`] stops the
/// delivery workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CrashPoint {
    /// Nowhere: the workers run as they should.
    #[default]
    Never,
    /// After a delivery is marked dead, before its dead letter is written.
    MarkingDead,
}

impl DeliveryConfig {
    /// The lease.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.delivery_lease_ms.max(1))
    }

    /// The fallback poll period.
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.delivery_poll_ms.max(1))
    }

    /// The first email retry's delay.
    pub fn email_retry_base(&self) -> Duration {
        Duration::from_millis(self.email_retry_base_ms.max(1))
    }

    /// How long finished deliveries are kept.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.delivery_retention_secs)
    }

    /// How many mails one process sends at once.
    pub fn email_slots(&self) -> usize {
        self.email_concurrency.max(1) as usize
    }

    /// How many webhooks one process sends at once.
    pub fn webhook_slots(&self) -> usize {
        self.webhook_concurrency.max(1) as usize
    }

    /// How many of those failing endpoints may hold (never more than all).
    pub fn failing_webhook_slots(&self) -> usize {
        (self.webhook_failing_concurrency.max(1) as usize).min(self.webhook_slots())
    }

    /// How many deliveries one endpoint may have in flight.
    pub fn per_endpoint(&self) -> i64 {
        i64::from(self.webhook_endpoint_concurrency.max(1))
    }
}

/// Live inbox streams.
#[derive(Debug, Clone, Args)]
pub struct InboxConfig {
    /// How many notifications one stream may have waiting for a slow client.
    #[arg(long, env = "KEEL_NOTIFICATIONS_STREAM_BUFFER", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub stream_buffer: u32,

    /// How long a stream's buffer may stay full; then the stream ends with
    /// ABORTED (STREAM_BEHIND) and the client resumes from its cursor (ms).
    #[arg(long, env = "KEEL_NOTIFICATIONS_STREAM_STALL_MS", default_value_t = 10_000)]
    pub stream_stall_ms: u64,
}

impl Default for InboxConfig {
    /// The command line's defaults.
    fn default() -> Self {
        Self {
            stream_buffer: 64,
            stream_stall_ms: 10_000,
        }
    }
}

impl InboxConfig {
    /// How many notifications one stream may have waiting.
    pub fn buffer(&self) -> usize {
        self.stream_buffer as usize
    }

    /// How long a full buffer may stay full.
    pub fn stall(&self) -> Duration {
        Duration::from_millis(self.stream_stall_ms.max(1))
    }
}
