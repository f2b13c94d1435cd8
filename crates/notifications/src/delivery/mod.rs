//! The delivery workers every channel shares. Each worker claims due
//! deliveries with `FOR UPDATE SKIP LOCKED` and a lease, so replicas share
//! the queue; sends each at least once (a receiver may see a delivery twice
//! if a worker dies between sending and recording, which is why mail carries
//! a stable Message-ID and webhooks a stable `webhook-id`); and records what
//! came of it: delivered, retried later with backoff, or dead-lettered.
//! The channels it sends on ([`crate::email`], [`crate::webhook`]) report
//! each attempt as a [`crate::domain::Outcome`].

mod backoff;
mod metrics;
mod worker;

pub use metrics::DeliveryMetrics;
pub use worker::Workers;
