//! Orders' queries, one public module per table group, used qualified
//! (`store::orders::find`, `store::products::lock`). Every function takes the
//! caller's connection, so a handler decides what runs in one transaction.

pub mod card_gateway_events;
pub mod orders;
pub mod products;
