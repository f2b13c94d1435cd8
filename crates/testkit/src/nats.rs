//! A nats-server with JetStream for the tests of the NATS event transport:
//! the one `KEEL_TEST_NATS_SERVER` names (`.ci/run` starts one and sets
//! it). Those tests are `#[ignore]`d, so a plain `cargo test` counts them
//! as skipped; run them with `cargo test -- --ignored nats`. Each test has
//! a subject and stream prefix of its own, so tests share the server
//! without meeting each other's events.

use std::io::Write as _;

use keel_platform::events::nats::{Broker, NatsConfig, async_nats::jetstream};
use keel_registry::REGISTRY;

use crate::SuiteOptions;

/// The variable that names the server (`nats://127.0.0.1:4222`).
pub const SERVER_ENV: &str = "KEEL_TEST_NATS_SERVER";

/// The server's URL; None, after one line on stderr saying `test` was
/// skipped, when no server is named.
pub fn server(test: &str) -> Option<String> {
    match std::env::var(SERVER_ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            // Straight to stderr: the test harness would capture a print.
            let _ = writeln!(
                std::io::stderr(),
                "skipped {test}: {SERVER_ENV} names no nats-server with JetStream"
            );
            None
        }
    }
}

/// One test's part of the server: its own prefix, the flags that point a
/// suite's services at it, and a broker to look at its streams with.
#[derive(Debug)]
pub struct NatsTest {
    /// The server.
    pub url: String,
    /// This test's `KEEL_NATS_PREFIX`.
    pub prefix: String,
    /// A connection of the test's own, under that prefix.
    pub broker: Broker,
}

impl NatsTest {
    /// A fresh prefix on the server at `url`.
    pub fn new(url: String) -> anyhow::Result<Self> {
        let prefix = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let config = NatsConfig {
            nats_url: Some(url.clone()),
            nats_prefix: prefix.clone(),
            ..NatsConfig::default()
        };
        let broker = Broker::new(config, "test", std::time::Duration::from_secs(420))?;
        Ok(Self { url, prefix, broker })
    }

    /// `options` with every service sending and receiving its events
    /// through this test's part of the server.
    pub fn suite_options(&self, options: SuiteOptions) -> SuiteOptions {
        REGISTRY.services().fold(options, |options, spec| {
            options.args(spec.name, &["--nats-url", &self.url, "--nats-prefix", &self.prefix])
        })
    }

    /// JetStream, with the streams set up.
    pub async fn jetstream(&self) -> anyhow::Result<&jetstream::Context> {
        self.broker.jetstream().await
    }

    /// Deletes this test's streams (and so its consumers), so the server
    /// does not fill up with finished tests.
    pub async fn cleanup(self) -> anyhow::Result<()> {
        let names = self.broker.names().clone();
        let jetstream = self.broker.jetstream().await?;
        for stream in [names.events_stream(), names.dead_letters_stream()] {
            jetstream
                .delete_stream(&stream)
                .await
                .map_err(|err| anyhow::anyhow!("deleting the stream {stream}: {err}"))?;
        }
        Ok(())
    }
}
