//! The testkit's own tests, one binary: the registry, readiness and metrics
//! of a real suite.

mod metrics;
mod readiness;
mod registry;
mod shared_tables;
