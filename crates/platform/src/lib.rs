//! The shared runtime every Keel service stands on: configuration, telemetry,
//! the gRPC server runner, the database pool and migrations, a private
//! Postgres for development, token verification, the outbox, and the one
//! error type that maps to `tonic::Status`.

pub mod audit;
pub mod client;
pub mod client_address;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod local_postgres;
pub mod metrics;
pub mod outbox;
pub mod paging;
pub mod principal;
pub mod proto;
pub mod registry;
pub mod relay;
pub mod revocations;
pub mod rpc;
pub mod rules;
pub mod scopes;
pub mod sealing;
pub mod server;
pub mod service_token;
pub mod telemetry;
pub mod verifier;

pub use error::{Error, Result};
pub use principal::{Principal, Role, principal};
