//! Accounts' integration tests, one binary: a real suite per test over gRPC
//! and real Postgres.

mod delivery;
mod event_sink;
mod invariants;
mod ledger;
mod movements;
mod nats;
mod outbox;
mod profiles;
mod refunds;
mod retention;
mod rules;
