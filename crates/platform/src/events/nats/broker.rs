//! The connection to NATS, the names of Keel's streams and subjects, and the
//! streams themselves, created or checked on first use.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use secrecy::ExposeSecret as _;
use tokio::sync::OnceCell;

use super::config::NatsConfig;
use crate::events::EventType;

/// How long one JetStream request (a publish's acknowledgement, a stream
/// lookup) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The streams, subjects and consumers of one prefix (`keel` unless
/// `KEEL_NATS_PREFIX` says otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// The names under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The stream of every event: `KEEL_EVENTS`.
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.stream_prefix())
    }

    /// The stream of dead letters: `KEEL_DEAD_LETTERS`.
    pub fn dead_letters_stream(&self) -> String {
        format!("{}_DEAD_LETTERS", self.stream_prefix())
    }

    /// The subject events of `event_type` are published on:
    /// `keel.events.<event type>`.
    pub fn event_subject(&self, event_type: EventType) -> String {
        format!("{}.events.{event_type}", self.prefix)
    }

    /// The event type a subject of the events stream names, if it names one.
    pub fn event_type_of(&self, subject: &str) -> Option<EventType> {
        self.event_type_name(subject)?.parse().ok()
    }

    /// Where consumer `service` puts the events of `event_type` (a name, as
    /// an undecodable event may have no known type) it gave up on:
    /// `keel.dead.<service>.<event type>`.
    pub fn dead_letter_subject(&self, service: &str, event_type: &str) -> String {
        format!("{}.dead.{service}.{event_type}", self.prefix)
    }

    /// The durable consumer of service `service`: `keel-<service>`.
    pub fn consumer(&self, service: &str) -> String {
        format!("{}-{service}", self.prefix)
    }

    /// The part of an events subject after `keel.events.`.
    pub(super) fn event_type_name<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".events.")
            .filter(|name| !name.is_empty())
    }

    fn events_subjects(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    fn dead_letter_subjects(&self) -> String {
        format!("{}.dead.>", self.prefix)
    }

    fn stream_prefix(&self) -> String {
        self.prefix.to_uppercase().replace('-', "_")
    }
}

/// One service's way to the broker: connected on first use (so a service
/// starts, and its outbox fills, while NATS is unreachable), with both
/// streams created or checked then. Clones share the connection.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    config: NatsConfig,
    names: Names,
    /// Who connects, as the server's connection list shows it.
    client_name: String,
    duplicate_window: Duration,
    jetstream: OnceCell<jetstream::Context>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("names", &self.inner.names)
            .field("client_name", &self.inner.client_name)
            .field("connected", &self.inner.jetstream.initialized())
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// The broker `config` names, for Keel service `service`, whose events
    /// stream drops a message id seen within `duplicate_window`
    /// ([`super::duplicate_window`]). Connects nowhere yet; an error when
    /// no URL is set.
    pub fn new(config: NatsConfig, service: &str, duplicate_window: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(config.enabled(), "KEEL_NATS_URL is not set");
        let names = Names::new(&config.nats_prefix);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                names,
                client_name: format!("keel-{service}"),
                duplicate_window,
                jetstream: OnceCell::new(),
            }),
        })
    }

    /// The names of its streams and subjects.
    pub fn names(&self) -> &Names {
        &self.inner.names
    }

    /// Its settings.
    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }

    /// JetStream, connecting and setting up the streams first if no call
    /// has yet; an error (tried again at the next call) when the server
    /// cannot be reached or a stream cannot be set up.
    pub async fn jetstream(&self) -> anyhow::Result<&jetstream::Context> {
        self.inner
            .jetstream
            .get_or_try_init(|| async {
                let jetstream = self.connect().await?;
                self.ensure_streams(&jetstream).await?;
                Ok(jetstream)
            })
            .await
    }

    async fn connect(&self) -> anyhow::Result<jetstream::Context> {
        let config = &self.inner.config;
        let url = config.nats_url.as_deref().context("KEEL_NATS_URL is not set")?;
        let mut options = async_nats::ConnectOptions::new()
            .name(&self.inner.client_name)
            .connection_timeout(REQUEST_TIMEOUT)
            // Once connected, the client reconnects by itself; say so in the
            // logs, where an operator looks when events stall.
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                    other => tracing::debug!(event = %other, "NATS connection event"),
                }
            });
        if let (Some(user), Some(password)) = (&config.nats_user, &config.nats_password) {
            options = options.user_and_password(user.clone(), password.expose_secret().to_owned());
        }
        // The URL may carry credentials: errors name the setting, not it.
        let client = options.connect(url).await.context("connecting to KEEL_NATS_URL")?;
        Ok(jetstream::ContextBuilder::new().timeout(REQUEST_TIMEOUT).build(client))
    }

    /// Creates both streams when they are missing; when they exist, checks
    /// that they take Keel's subjects and raises a duplicate window shorter
    /// than this service's relay needs. Nothing else is changed on an
    /// existing stream: several services (and versions) start at once, and
    /// an operator may have tuned the streams.
    async fn ensure_streams(&self, jetstream: &jetstream::Context) -> anyhow::Result<()> {
        let names = &self.inner.names;
        let config = &self.inner.config;
        let max_age = config.max_age();
        let events = stream::Config {
            name: names.events_stream(),
            description: Some("Keel's events, one subject per event type.".to_owned()),
            subjects: vec![names.events_subjects()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age,
            // JetStream refuses a window longer than the stream keeps messages.
            duplicate_window: self.inner.duplicate_window.min(max_age),
            num_replicas: usize::from(config.nats_replicas),
            ..Default::default()
        };
        ensure_stream(jetstream, events).await?;
        let dead_letters = stream::Config {
            name: names.dead_letters_stream(),
            description: Some("Keel's events that a consumer gave up on, by consumer and event type.".to_owned()),
            subjects: vec![names.dead_letter_subjects()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age,
            // A dead letter published twice (a crash before the original's
            // termination) is kept once.
            duplicate_window: self.inner.duplicate_window.min(max_age),
            num_replicas: usize::from(config.nats_replicas),
            ..Default::default()
        };
        ensure_stream(jetstream, dead_letters).await
    }
}

/// Creates the stream `wanted` describes, or checks the one of its name.
async fn ensure_stream(jetstream: &jetstream::Context, wanted: stream::Config) -> anyhow::Result<()> {
    let name = wanted.name.clone();
    let mut stream = jetstream
        .get_or_create_stream(wanted.clone())
        .await
        .with_context(|| format!("creating or looking up the stream {name}"))?;
    let info = stream
        .info()
        .await
        .with_context(|| format!("reading the stream {name}"))?;
    let mut config = info.config.clone();
    for subject in &wanted.subjects {
        anyhow::ensure!(
            config.subjects.contains(subject),
            "the stream {name} exists without the subject {subject} (it has {:?}); Keel needs its own stream there",
            config.subjects
        );
    }
    if config.duplicate_window < wanted.duplicate_window {
        tracing::info!(
            stream = %name,
            from = ?config.duplicate_window,
            to = ?wanted.duplicate_window,
            "raising the stream's duplicate window to outlast this relay's republishing"
        );
        config.duplicate_window = wanted.duplicate_window;
        jetstream
            .update_stream(&config)
            .await
            .with_context(|| format!("raising the duplicate window of the stream {name}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_under_the_default_prefix() {
        let names = Names::new("keel");
        assert_eq!(names.events_stream(), "KEEL_EVENTS");
        assert_eq!(names.dead_letters_stream(), "KEEL_DEAD_LETTERS");
        assert_eq!(
            names.event_subject(EventType::BalanceChanged),
            "keel.events.balance.changed"
        );
        assert_eq!(
            names.dead_letter_subject("accounts", "user.registered"),
            "keel.dead.accounts.user.registered"
        );
        assert_eq!(names.consumer("accounts"), "keel-accounts");
    }

    #[test]
    fn a_subject_names_its_event_type() {
        let names = Names::new("keel-test");
        assert_eq!(names.events_stream(), "KEEL_TEST_EVENTS");
        for event_type in EventType::ALL {
            assert_eq!(names.event_type_of(&names.event_subject(event_type)), Some(event_type));
        }
        assert_eq!(names.event_type_of("keel-test.events.user.deleted"), None);
        assert_eq!(names.event_type_of("keel.events.user.registered"), None);
        assert_eq!(names.event_type_of("keel-test.events."), None);
    }
}
