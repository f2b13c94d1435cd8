//! Notifications' queries, one module per table group. Every function takes
//! the caller's connection, so a handler decides what runs in one
//! transaction.

pub mod claims;
pub mod dead_letters;
pub mod deliveries;
pub mod endpoints;
pub mod inbox;
pub mod link_keys;
pub mod preferences;
pub mod recipients;
