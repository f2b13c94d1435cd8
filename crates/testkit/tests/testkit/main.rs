//! The testkit's own tests, one binary: the registry, readiness and metrics
//! of a real suite, a suite of replicas, and the tables every service's
//! database shares.

mod metrics;
mod processed_events;
mod readiness;
mod registry;
mod replicas;
mod shared_tables;
