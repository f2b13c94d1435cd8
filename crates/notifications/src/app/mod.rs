//! What notifications does, apart from how it is called: the service's
//! state ([`Notifications`]) and its operations, one file per capability.
//! The gRPC adapters in `service/` call these; nothing here knows tonic.
//!
//! - consuming events (`events`): each event becomes, in its own
//!   transaction, an inbox entry and the deliveries its user's preferences
//!   pick;
//! - the inbox (`inbox`): listing, marking read and streaming live;
//! - [`preferences`]: each user's channels per topic, and the one-click
//!   unsubscribe;
//! - webhook endpoints (`webhook_endpoints`): registering, listing,
//!   deleting, and rotating their signing secrets;
//! - dead letters (`dead_letters`): what never went through, and sending it
//!   again.
//!
//! Nothing here sends: the delivery workers (`delivery/`) send what
//! these operations queue.

mod dead_letters;
mod events;
mod inbox;
pub mod preferences;
mod webhook_endpoints;

use std::{sync::Arc, time::Duration};

use keel_platform::{db::Pool, events::EventProducers, sealing::SealingKey};
use tokio_util::sync::CancellationToken;

pub use inbox::{InboxPage, MarkedRead, StreamEnd, StreamItem};
pub use preferences::{PreferencesChange, UserPreferences};
pub use webhook_endpoints::{AddEndpoint, EndpointWithSecret};

use crate::{
    config::InboxConfig,
    email::{templates::Templates, unsubscribe::LinkKey},
    live::Hub,
    webhook::send::Sender,
};

/// The notifications service's state: its database, the templates of inbox
/// entries, the live streams' wakes and the keys it signs and seals with.
/// Clones share it.
#[derive(Debug, Clone)]
pub struct Notifications {
    pub(crate) pool: Pool,
    pub(crate) event_producers: EventProducers,
    pub(crate) hub: Hub,
    pub(crate) templates: Arc<Templates>,
    /// Checks endpoint URLs at registration (the SSRF guard).
    pub(crate) webhooks: Arc<Sender>,
    /// Seals webhook signing secrets at rest.
    pub(crate) secrets_key: Option<SealingKey>,
    /// Signs unsubscribe links.
    pub(crate) link_key: LinkKey,
    /// The most entries one stream may have waiting for its client.
    pub(crate) stream_buffer: usize,
    /// How long a full buffer may stay full before the stream ends.
    pub(crate) stream_stall: Duration,
    /// Ends open streams when the server stops.
    pub(crate) shutdown: CancellationToken,
}

impl Notifications {
    /// Notifications over a (migrated) database: it accepts each event
    /// type from its producer in `event_producers`, writes inbox entries
    /// with `templates`, wakes streams through `hub`, checks endpoint URLs
    /// with `webhooks` and verifies unsubscribe links with `link_key`.
    /// Signing secrets are stored unsealed until
    /// [`with_secrets_key`](Notifications::with_secrets_key) gives a key;
    /// streams pace themselves by [`InboxConfig`]'s defaults until
    /// [`with_streams`](Notifications::with_streams).
    pub fn new(
        pool: Pool,
        event_producers: EventProducers,
        hub: Hub,
        templates: Arc<Templates>,
        webhooks: Arc<Sender>,
        link_key: LinkKey,
    ) -> Self {
        let inbox = InboxConfig::default();
        Self {
            pool,
            event_producers,
            hub,
            templates,
            webhooks,
            secrets_key: None,
            link_key,
            stream_buffer: inbox.buffer(),
            stream_stall: inbox.stall(),
            shutdown: CancellationToken::new(),
        }
    }

    /// Seals webhook signing secrets at rest with `key` (none: stored as
    /// they are).
    #[must_use]
    pub fn with_secrets_key(mut self, key: Option<SealingKey>) -> Self {
        self.secrets_key = key;
        self
    }

    /// Paces live streams by `inbox`, and ends them at `shutdown`.
    #[must_use]
    pub fn with_streams(mut self, inbox: &InboxConfig, shutdown: CancellationToken) -> Self {
        self.stream_buffer = inbox.buffer();
        self.stream_stall = inbox.stall();
        self.shutdown = shutdown;
        self
    }

    /// The database pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// One page of a listing: its rows, and the cursor of its last row when
/// another page follows.
#[derive(Debug, Clone)]
pub struct Page<T, C = uuid::Uuid> {
    /// The rows, at most a page.
    pub rows: Vec<T>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<C>,
}

impl<T, C> Page<T, C> {
    /// Splits rows fetched with `limit + 1` (one more than a page, to learn
    /// whether another page follows) into the page and the cursor of its
    /// last row.
    pub(crate) fn of(mut rows: Vec<T>, limit: i64, cursor: impl Fn(&T) -> C) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if rows.len() > limit {
            rows.truncate(limit);
            let next = rows.last().map(cursor);
            Self { rows, next }
        } else {
            Self { rows, next: None }
        }
    }
}
