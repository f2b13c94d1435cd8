DROP TABLE ledger_entries;
DROP TABLE accounts;
DROP FUNCTION account_starts_empty();
DROP FUNCTION account_balance_matches_ledger();
DROP FUNCTION ledger_entry_is_immutable();
DROP FUNCTION ledger_entry_continues_chain();
