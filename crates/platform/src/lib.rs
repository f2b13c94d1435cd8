//! The shared runtime every Keel service stands on, in rooms by concern:
//!
//! - [`auth`]: access tokens and their verification, revocations, service
//!   tokens and scopes;
//! - [`events`]: the consumer side of events, the outbox and its relay,
//!   and NATS JetStream as their transport when one is configured;
//! - [`serve`]: the gRPC server and its layers (rules, metrics, telemetry,
//!   audit) and what handlers share;
//! - [`db`]: the pool, migrations and pagination;
//! - [`config`], [`client`], [`registry`], [`sealing`] and the one [`Error`]
//!   type that maps to `tonic::Status`.

pub mod auth;
pub mod client;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod proto;
pub mod registry;
pub mod sealing;
pub mod serve;

pub use auth::principal::{Principal, Role, principal};
pub use error::{Error, Result};
