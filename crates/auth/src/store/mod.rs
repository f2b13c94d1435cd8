//! Auth's queries, one function per question or change, in one file per
//! table (or pair of tables that change together).

mod one_time_tokens;
mod revocations;
mod sessions;
mod signing_keys;
mod throttle_counters;
mod users;

use diesel::result::Error as DieselError;

pub use one_time_tokens::*;
pub use revocations::*;
pub use sessions::*;
pub use signing_keys::*;
pub use throttle_counters::*;
pub use users::*;

type QueryResult<T> = Result<T, DieselError>;
