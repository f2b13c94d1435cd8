//! The `keel` command's integration tests, one binary: the real executable
//! against a private Postgres.

mod migrate;
mod shutdown;
mod up;
mod up_replicas;
