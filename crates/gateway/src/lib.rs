//! Keel's REST/JSON gateway (being built; see docs/architecture.md): the
//! route table comes from the `google.api.http` annotations in the descriptor
//! set, never from a hand-written list.

pub mod routes;
pub mod status;
pub mod template;
