//! The delivery workers every channel shares.

mod outcome;

pub use outcome::Outcome;
