//! Orders' queries, one module per table group. Every function takes the
//! caller's connection, so a handler decides what runs in one transaction.

pub mod orders;
pub mod products;

pub use orders::{ItemRow, NewItem, NewOrder, OrderChanges, OrderRow};
pub use products::{AdjustmentRow, NewAdjustment, NewProduct, ProductChanges, ProductRow};
