DROP TRIGGER ledger_entries_no_truncate ON ledger_entries;
DROP TRIGGER ledger_entries_reach_account ON ledger_entries;
DROP FUNCTION ledger_entry_reached_account();
