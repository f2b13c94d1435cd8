DROP TRIGGER ledger_entries_refund_within_debit ON ledger_entries;
DROP FUNCTION ledger_refund_within_debit();
DROP INDEX ledger_entries_refunds_by_debit;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_refund_names_debit;
ALTER TABLE ledger_entries DROP COLUMN refund_of;
