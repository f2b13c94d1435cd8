//! The testkit's own tests, one binary: the registry, readiness and metrics
//! of a real suite, and the tables every service's database shares.

mod metrics;
mod processed_events;
mod readiness;
mod registry;
mod shared_tables;
