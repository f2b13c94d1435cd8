//! Orders' settings: its own clap arguments, with the groups every service
//! takes from platform's [`ServiceArgs`].

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use keel_platform::config::ServiceArgs;
use secrecy::{ExposeSecret as _, SecretString};

use crate::payment;

/// Orders' settings.
#[derive(Debug, Clone, Args)]
pub struct OrdersConfig {
    #[command(flatten)]
    pub saga: SagaConfig,

    #[command(flatten)]
    pub card_gateway: CardGatewayConfig,

    #[command(flatten)]
    pub service: ServiceArgs,
}

/// The external card gateway (Stripe's API); unset, PAYMENT_METHOD_EXTERNAL
/// is refused with PAYMENT_METHOD_UNAVAILABLE.
#[derive(Debug, Clone, Args)]
pub struct CardGatewayConfig {
    /// The card gateway's base URL (`https://api.stripe.com`, or a stand-in).
    #[arg(long, env = "KEEL_ORDERS_CARD_GATEWAY_URL")]
    pub card_gateway_url: Option<String>,

    /// The secret API key, sent as the bearer token.
    #[arg(long, env = "KEEL_ORDERS_CARD_GATEWAY_SECRET_KEY", hide_env_values = true)]
    pub card_gateway_secret_key: Option<SecretString>,

    /// The webhook signing secrets (`whsec_...`), comma-separated: during a
    /// rotation give both, the new one first.
    #[arg(
        long,
        env = "KEEL_ORDERS_CARD_WEBHOOK_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub card_webhook_secrets: Vec<SecretString>,

    /// How long one call to the card gateway may take (milliseconds); after
    /// that its outcome counts as unknown and the resumer asks again.
    #[arg(long, env = "KEEL_ORDERS_CARD_GATEWAY_TIMEOUT_MS", default_value_t = 10_000)]
    pub card_gateway_timeout_ms: u64,
}

impl CardGatewayConfig {
    /// The card provider, when a gateway is configured.
    pub fn provider(&self) -> anyhow::Result<Option<payment::CardGateway>> {
        let Some(url) = &self.card_gateway_url else {
            return Ok(None);
        };
        let key = self
            .card_gateway_secret_key
            .clone()
            .context("KEEL_ORDERS_CARD_GATEWAY_URL is set, so KEEL_ORDERS_CARD_GATEWAY_SECRET_KEY must be too")?;
        if self
            .card_webhook_secrets
            .iter()
            .all(|s| s.expose_secret().trim().is_empty())
        {
            tracing::warn!(
                "KEEL_ORDERS_CARD_WEBHOOK_SECRETS is not set: card gateway webhooks are refused, and payments \
                 that need 3-D Secure settle only when the resumer asks the gateway"
            );
        }
        let timeout = Duration::from_millis(self.card_gateway_timeout_ms.max(1));
        Ok(Some(payment::CardGateway::new(url, key, timeout)?))
    }

    /// The webhook secrets given.
    pub fn webhook_secrets(&self) -> Vec<SecretString> {
        self.card_webhook_secrets
            .iter()
            .map(|s| s.expose_secret().trim())
            .filter(|s| !s.is_empty())
            .map(SecretString::from)
            .collect()
    }
}

/// How the payment saga paces itself.
#[derive(Debug, Clone, Args)]
pub struct SagaConfig {
    /// How long an order may stay unpaid (PENDING_PAYMENT) before the resumer
    /// cancels it, releasing its stock and refunding a charge that still
    /// turns up (seconds).
    #[arg(long, env = "KEEL_ORDERS_PAYMENT_DEADLINE_SECS", default_value_t = 900)]
    pub payment_deadline_secs: u64,

    /// How long whoever works on an order's payment holds it after each of
    /// its writes (it renews the hold before every call to a partner); the
    /// resumer skips held orders. Keep it above the card gateway's timeout
    /// (milliseconds).
    #[arg(long, env = "KEEL_ORDERS_PAYMENT_LEASE_MS", default_value_t = 30_000)]
    pub payment_lease_ms: u64,

    /// How often the resumer looks for orders whose payment or refund is
    /// unfinished (milliseconds); it also looks once at start.
    #[arg(long, env = "KEEL_ORDERS_RESUME_INTERVAL_MS", default_value_t = 5_000)]
    pub resume_interval_ms: u64,

    /// How many orders one resumer works on at once. Each worker claims one
    /// order at a time and goes on until none is left, so a backlog drains
    /// as fast as the payment partners answer.
    #[arg(long, env = "KEEL_ORDERS_RESUME_BATCH", default_value_t = 8,
          value_parser = clap::value_parser!(i64).range(1..=256))]
    pub resume_batch: i64,

    /// How often orders compares its card orders with the card gateway's
    /// charges and refunds what no order may keep (seconds; 0: never).
    #[arg(long, env = "KEEL_ORDERS_RECONCILE_INTERVAL_SECS", default_value_t = 600)]
    pub reconcile_interval_secs: u64,

    /// Test hook: CreateOrder stops after this step as if the process died
    /// there, leaving the rest to the resumer. Never set it in production.
    #[arg(long, env = "KEEL_ORDERS_TEST_CRASH_AFTER", value_enum, hide = true)]
    pub test_crash_after: Option<CrashPoint>,
}

/// Where the test hook [`SagaConfig::test_crash_after`] stops CreateOrder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CrashPoint {
    /// After the transaction that reserves the stock, before the charge.
    Reservation,
    /// After the charge, before its outcome is recorded.
    Charge,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            payment_deadline_secs: 900,
            payment_lease_ms: 30_000,
            resume_interval_ms: 5_000,
            resume_batch: 8,
            reconcile_interval_secs: 600,
            test_crash_after: None,
        }
    }
}

impl SagaConfig {
    /// The payment deadline.
    pub fn payment_deadline(&self) -> Duration {
        Duration::from_secs(self.payment_deadline_secs)
    }

    /// The lease.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.payment_lease_ms.max(1))
    }

    /// Reconciliation's period; None when it is off.
    pub fn reconcile_interval(&self) -> Option<Duration> {
        (self.reconcile_interval_secs > 0).then(|| Duration::from_secs(self.reconcile_interval_secs))
    }

    /// The resumer's period.
    pub fn resume_interval(&self) -> Duration {
        Duration::from_millis(self.resume_interval_ms.max(1))
    }
}
