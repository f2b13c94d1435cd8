//! The scopes of service tokens, named once: the service that checks a scope
//! and the services that ask for it use these constants, never a string.

/// Deliver events to another service's EventSink.
pub const EVENTS_DELIVER: &str = "events.deliver";
/// Deposit into any account.
pub const ACCOUNTS_DEPOSIT: &str = "accounts.deposit";
/// Debit any account.
pub const ACCOUNTS_DEBIT: &str = "accounts.debit";
/// Refund into any account.
pub const ACCOUNTS_REFUND: &str = "accounts.refund";
