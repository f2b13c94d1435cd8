//! Auth's integration tests, one binary: a real suite per test over gRPC and
//! real Postgres.

mod admin;
mod at_rest;
mod lockout;
mod login;
mod outages;
mod providers;
mod races;
mod recovery;
mod registration;
mod revocation;
mod rules;
mod second_factor;
mod service_tokens;
mod serving;
mod session_lifetime;
mod sessions;
mod tokens;
