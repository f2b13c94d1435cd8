//! Accounts' settings: its own clap arguments, with the groups every service
//! takes from platform's [`ServiceArgs`].

use clap::Args;
use keel_platform::config::ServiceArgs;

use crate::domain::Currency;

/// Accounts' settings.
#[derive(Debug, Clone, Args)]
pub struct AccountsConfig {
    /// The currency of new accounts (ISO 4217).
    #[arg(long, env = "KEEL_ACCOUNTS_CURRENCY", default_value = "USD")]
    pub currency: String,

    #[command(flatten)]
    pub service: ServiceArgs,
}

impl AccountsConfig {
    /// Parses `args` (the first is the program name), with the environment
    /// filling in what they leave out.
    pub fn from_args<'a>(args: impl IntoIterator<Item = &'a str>) -> anyhow::Result<Self> {
        keel_platform::config::from_args(args)
    }

    /// The currency of new accounts, checked.
    pub fn currency(&self) -> anyhow::Result<Currency> {
        Currency::parse("currency", &self.currency)
            .map_err(|v| anyhow::anyhow!("KEEL_ACCOUNTS_CURRENCY {}", v.description))
    }
}
