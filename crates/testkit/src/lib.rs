//! Test support for Keel: a real PostgreSQL with zero set-up, a fresh
//! database per test cloned from a migrated template, and the whole suite
//! started in-process on port 0 with typed clients; stand-ins for the
//! outside world (a card gateway, an SMTP server) beside it.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let suite = keel_testkit::spawn_suite().await?;
//! let mut auth = suite.auth();
//! # Ok(()) }
//! ```

pub mod card_gateway;
pub mod database;
pub mod http;
pub mod metrics;
pub mod nats;
pub mod oidc_provider;
pub mod otlp;
pub mod ports;
pub mod proxy;
pub mod reflection;
pub mod smtp;
pub mod status;
pub mod streams;
pub mod suite;
pub mod webhook_receiver;

pub use database::{TestDatabase, server_url};
pub use suite::{
    Suite, SuiteOptions, authorized, spawn_suite, spawn_suite_holding_events, spawn_suite_with,
    spawn_suite_with_options, spawn_suite_with_withheld_registration,
};
