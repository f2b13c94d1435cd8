//! The delivery workers every channel shares. Mail and webhooks each have a
//! lane of workers of their own (`lane.rs`), which claim due deliveries with
//! `FOR UPDATE SKIP LOCKED` and a lease, so replicas share the queue, and
//! take the next one as soon as an attempt ends. Webhook claims keep each
//! endpoint within its limit of deliveries in flight, counted from the
//! leases in the database, and give endpoints that are failing only part of
//! the lane: a slow or dead endpoint delays its own deliveries, no one
//! else's. Each delivery is sent at least once (a receiver may see it twice
//! if a worker dies between sending and recording, which is why mail
//! carries a stable Message-ID and webhooks a stable `webhook-id`), and what
//! came of it is recorded in one transaction (`record.rs`): delivered,
//! retried later with backoff, or dead-lettered. The channels it sends on
//! ([`crate::email`], [`crate::webhook`]) report each attempt as a
//! [`crate::domain::Outcome`].

mod backoff;
mod lane;
mod metrics;
mod record;
mod upkeep;
mod worker;

pub use metrics::DeliveryMetrics;
pub use worker::Workers;
