//! Orders' integration tests, one binary: a real suite per test, with the
//! card gateway stand-in and delay proxies in-process.

mod cards;
mod catalog;
mod common;
mod concurrency;
mod gateway;
mod orders;
mod recovery;
mod rules;
mod trace;
