//! Accounts' queries, one module per table group: [`accounts`] (the
//! accounts and their balances), [`ledger`] (the ledger entries behind the
//! balances) and [`debit_keys`] (the debit keys that can never debit). Every
//! function takes the caller's connection, so an operation decides what runs
//! in one transaction.

pub mod accounts;
pub mod debit_keys;
pub mod ledger;
