-- Close the two ways around the ledger's row triggers.

-- An entry must have reached its account's balance by the end of its
-- transaction (checked at commit, after the balance update).
CREATE FUNCTION ledger_entry_reached_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM accounts WHERE id = NEW.account_id AND ledger_seq >= NEW.seq) THEN
        RAISE EXCEPTION 'ledger entry % of account % was not applied to its balance', NEW.seq, NEW.account_id;
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER ledger_entries_reach_account AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_entry_reached_account();

-- TRUNCATE skips row triggers: refuse it outright.
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entry_is_immutable();
