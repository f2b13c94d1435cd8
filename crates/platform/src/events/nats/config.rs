//! The NATS settings every service takes, beside the relay's.

use std::time::Duration;

use clap::Args;
use secrecy::SecretString;

use crate::events::relay::{self, RelayConfig};

/// Where the event broker is and how events live on it. Unset
/// `KEEL_NATS_URL` leaves events on direct gRPC delivery.
#[derive(Debug, Clone, Args)]
pub struct NatsConfig {
    /// NATS servers with JetStream to carry events, e.g.
    /// `nats://nats:4222` (`tls://` for TLS; several comma-separated).
    /// Unset, each relay delivers to the consumers' EventSinks over gRPC.
    #[arg(long, env = "KEEL_NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,

    /// The user this service connects to NATS as (with
    /// KEEL_NATS_PASSWORD); unset, it connects without one (or as the URL
    /// says).
    #[arg(long, env = "KEEL_NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,

    /// That user's password.
    #[arg(long, env = "KEEL_NATS_PASSWORD", hide_env_values = true, requires = "nats_user")]
    pub nats_password: Option<SecretString>,

    /// The first token of every subject and of the stream names:
    /// `<prefix>.events.<type>`, `<PREFIX>_EVENTS`; another prefix keeps a
    /// second deployment on the same server apart.
    #[arg(long, env = "KEEL_NATS_PREFIX", default_value = "keel", value_parser = parse_prefix)]
    pub nats_prefix: String,

    /// Deliveries of one event to a consumer before it goes to the
    /// dead-letter subject instead.
    #[arg(long, env = "KEEL_NATS_MAX_DELIVER", default_value_t = 10, value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub nats_max_deliver: i64,

    /// How long a consumer may take over one event before JetStream
    /// delivers it again (seconds).
    #[arg(long, env = "KEEL_NATS_ACK_WAIT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub nats_ack_wait_secs: u64,

    /// How long the streams keep events and dead letters (seconds): what a
    /// new consumer can replay, and how long a consumer may be down.
    #[arg(long, env = "KEEL_NATS_MAX_AGE_SECS", default_value_t = 7 * 24 * 3600, value_parser = clap::value_parser!(u64).range(3600..))]
    pub nats_max_age_secs: u64,

    /// Copies JetStream keeps of each stream (1, or 3 on a cluster of three
    /// servers).
    #[arg(long, env = "KEEL_NATS_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_replicas: u8,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            nats_url: None,
            nats_user: None,
            nats_password: None,
            nats_prefix: "keel".to_owned(),
            nats_max_deliver: 10,
            nats_ack_wait_secs: 30,
            nats_max_age_secs: 7 * 24 * 3600,
            nats_replicas: 1,
        }
    }
}

impl NatsConfig {
    /// Whether events go through NATS.
    pub fn enabled(&self) -> bool {
        self.nats_url.is_some()
    }

    /// How long a consumer has for one event.
    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.nats_ack_wait_secs)
    }

    /// How long the streams keep what they hold.
    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.nats_max_age_secs)
    }
}

/// The events stream's duplicate window for relays paced by `relay`:
/// longer than the longest a relay may take to publish one event again.
///
/// It publishes again when its lease on the row runs out after a publish
/// whose acknowledgement it never recorded (a crash, a timeout: at most the
/// lease later), or when a publish's acknowledgement was lost and it retries
/// (at most the longest backoff later). The lease (5 minutes) plus the
/// longest backoff (60 s by default) plus a minute's margin: 7 minutes by
/// default. A copy published later still applies once, through the
/// consumers' `processed_events`; the window only keeps it out of the
/// stream.
pub fn duplicate_window(relay: &RelayConfig) -> Duration {
    relay::LEASE + Duration::from_millis(relay.relay_max_backoff_ms) + Duration::from_secs(60)
}

/// A prefix is one subject token that is also fit for a stream name.
fn parse_prefix(prefix: &str) -> Result<String, String> {
    let fit = !prefix.is_empty()
        && prefix.len() <= 32
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if fit {
        Ok(prefix.to_owned())
    } else {
        Err("a prefix is 1 to 32 letters, digits, `-` or `_`".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_duplicate_window_outlasts_a_republish() {
        let window = duplicate_window(&RelayConfig::default());
        assert_eq!(window, Duration::from_secs(7 * 60));
        let slow = RelayConfig {
            relay_max_backoff_ms: 600_000,
            ..RelayConfig::default()
        };
        assert_eq!(duplicate_window(&slow), Duration::from_secs(16 * 60));
    }

    #[test]
    fn a_prefix_is_one_plain_token() {
        assert!(parse_prefix("keel").is_ok());
        assert!(parse_prefix("keel-staging_2").is_ok());
        for bad in ["", "keel.events", "keel>", "a b", "kéel", &"k".repeat(33)] {
            assert!(parse_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
