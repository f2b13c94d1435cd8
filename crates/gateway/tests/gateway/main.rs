//! The gateway's integration tests, one binary: real HTTP against a real
//! suite.

mod docs;
mod edge;
mod routes;
mod slow_clients;
mod stream_resume;
mod streams;
