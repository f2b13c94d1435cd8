//! NATS JetStream as the event transport, when `KEEL_NATS_URL` is set;
//! without it, relays deliver to the consumers' EventSinks directly, as
//! before.
//!
//! - **Streams.** One stream, `KEEL_EVENTS`, holds every event on
//!   `keel.events.<event type>` (`keel.events.balance.changed`), on file
//!   storage, for `KEEL_NATS_MAX_AGE_SECS`; a second, `KEEL_DEAD_LETTERS`,
//!   holds what consumers gave up on, on `keel.dead.<consumer>.<event type>`:
//!   kept apart so a consumer's filter or a replay of the events never meets
//!   a dead letter, and so dead letters can be read and purged on their own.
//!   Every service creates both at start if they are missing, and checks
//!   them if not ([`Broker`]).
//! - **Producers.** The relay claims outbox rows as it does for gRPC; each
//!   event is one publish with `Nats-Msg-Id` = the event id and the relay
//!   span's `traceparent`/`tracestate`, and its row is marked done when
//!   JetStream acknowledges it (the broker fans out; there is no
//!   per-subscriber bookkeeping). The same event published again (a lease
//!   that ran out, a lost acknowledgement) is dropped by the stream's
//!   duplicate window ([`duplicate_window`]); one published again later
//!   still applies once, through the consumers' `processed_events`.
//! - **Consumers.** Each consuming service reads through a durable pull
//!   consumer, `keel-<service>`, filtered to the subjects of the types it
//!   consumes, with explicit acks ([`Consumer`]). An event goes through the
//!   service's own EventSink in-process, so its checks, `processed_events`
//!   and effects are the gRPC path's; it is acked once that has committed,
//!   nak'd with a backoff when it failed, and after `KEEL_NATS_MAX_DELIVER`
//!   deliveries published to the dead-letter subject and terminated
//!   (`keel_events_dead_lettered_total`).
//! - **Trust.** A consumer takes an event on `keel.events.<type>` as coming
//!   from the type's producer (the registry names one per type). JetStream
//!   has authenticated the publisher, so NATS permissions must be what let
//!   only that service publish to `keel.events.<type>` (README.md, "Events
//!   over NATS JetStream").
//!
//! The prefix `keel` (and so the stream names) is `KEEL_NATS_PREFIX`, so
//! two Keel deployments (or two tests) can share one server.

mod broker;
mod config;
mod consumer;
mod headers;
mod publisher;

/// The client library, for callers that talk to the streams themselves
/// (tests, tools).
pub use async_nats;
pub use broker::{Broker, Names};
pub use config::{NatsConfig, duplicate_window};
pub use consumer::Consumer;
pub use publisher::Published;
