-- A refund gives back (part of) one debit of its own account, and the refunds of
-- a debit never add up to more than it: the `accounts.refund` scope returns money,
-- it cannot create any.
ALTER TABLE ledger_entries ADD COLUMN refund_of uuid REFERENCES ledger_entries (id);

-- Every new refund names its debit, and no other kind names anything. NOT VALID:
-- refunds written before this migration named none and, entries being immutable,
-- stay so; every row inserted from now on is checked.
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_refund_names_debit
    CHECK ((kind = 'refund') = (refund_of IS NOT NULL)) NOT VALID;

CREATE INDEX ledger_entries_refunds_by_debit ON ledger_entries (refund_of) WHERE refund_of IS NOT NULL;

-- The named entry is a debit of the same account and currency, and with this
-- refund its refunds stay within its amount.
CREATE FUNCTION ledger_refund_within_debit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    debit ledger_entries%ROWTYPE;
    refunded bigint;
BEGIN
    IF NEW.refund_of IS NULL THEN
        RETURN NEW;
    END IF;
    -- Locked, so two refunds of one debit are checked one after the other even
    -- by a writer that does not lock the account first.
    SELECT * INTO debit FROM ledger_entries WHERE id = NEW.refund_of FOR NO KEY UPDATE;
    IF NOT FOUND OR debit.kind <> 'debit' OR debit.account_id <> NEW.account_id
        OR debit.currency <> NEW.currency THEN
        RAISE EXCEPTION 'refund % must name a debit of account % in %', NEW.id, NEW.account_id, NEW.currency
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT COALESCE(SUM(amount_minor), 0) INTO refunded FROM ledger_entries WHERE refund_of = NEW.refund_of;
    IF refunded + NEW.amount_minor > debit.amount_minor THEN
        RAISE EXCEPTION 'refunds of debit % would exceed its amount', NEW.refund_of
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_entries_refund_within_debit BEFORE INSERT ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_refund_within_debit();
