//! Auth's queries, one public module per table (or pair of tables that
//! change together), used qualified: `store::users::find(conn, id)`. Every
//! function takes the caller's connection, so an operation decides what runs
//! in one transaction.

pub mod identities;
pub mod login_challenges;
pub mod one_time_tokens;
pub mod provider_sign_ins;
pub mod revocations;
pub mod second_factors;
pub mod sessions;
pub mod signing_keys;
pub mod throttle_counters;
pub mod users;
