//! Serving a gRPC service: the server and its tower stack, request rules,
//! what handlers share, metrics, logs and traces, and security events.

pub mod audit;
pub mod client_address;
pub mod metrics;
pub mod rpc;
pub mod rules;
pub mod server;
pub mod telemetry;
