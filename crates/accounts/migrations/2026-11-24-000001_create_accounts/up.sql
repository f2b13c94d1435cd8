-- One account per user; its id is the user's id in auth.
CREATE TABLE accounts (
    id uuid PRIMARY KEY,
    -- Filled from UserRegistered; empty when the account was created on the
    -- user's first call before that event arrived.
    email text NOT NULL DEFAULT '',
    display_name text NOT NULL DEFAULT '' CHECK (length(display_name) <= 100),
    currency text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- The balance in minor units; equals the newest ledger entry's
    -- balance_after (see the trigger below) and never goes below zero.
    balance_minor bigint NOT NULL DEFAULT 0 CHECK (balance_minor >= 0),
    -- How many ledger entries the account has (the newest one's seq).
    ledger_seq bigint NOT NULL DEFAULT 0 CHECK (ledger_seq >= 0),
    -- Bumped on every profile change; the etag.
    version bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The append-only ledger. Entries of an account form a chain: seq 1, 2, 3...,
-- each balance_after = the previous one's + delta.
CREATE TABLE ledger_entries (
    id uuid PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES accounts (id),
    seq bigint NOT NULL CHECK (seq > 0),
    kind text NOT NULL CHECK (kind IN ('deposit', 'debit', 'refund')),
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    delta_minor bigint NOT NULL CHECK (
        (kind = 'debit' AND delta_minor = -amount_minor) OR (kind <> 'debit' AND delta_minor = amount_minor)),
    currency text NOT NULL,
    balance_after_minor bigint NOT NULL CHECK (balance_after_minor >= 0),
    -- The caller's idempotency key, unique per account.
    request_id text NOT NULL CHECK (length(request_id) BETWEEN 1 AND 128),
    reference text NOT NULL DEFAULT '',
    reason text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, seq),
    UNIQUE (account_id, request_id)
);

-- A new entry must continue its account's chain.
CREATE FUNCTION ledger_entry_continues_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    previous bigint;
BEGIN
    IF NEW.seq = 1 THEN
        previous := 0;
    ELSE
        SELECT balance_after_minor INTO previous
        FROM ledger_entries WHERE account_id = NEW.account_id AND seq = NEW.seq - 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'ledger entry % of account % has no predecessor', NEW.seq, NEW.account_id;
        END IF;
    END IF;
    IF NEW.balance_after_minor <> previous + NEW.delta_minor THEN
        RAISE EXCEPTION 'ledger entry % of account % does not add up', NEW.seq, NEW.account_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_entries_chain BEFORE INSERT ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entry_continues_chain();

-- Entries are never changed or removed.
CREATE FUNCTION ledger_entry_is_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are append-only';
END $$;
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entry_is_immutable();

-- An account's balance only ever moves to its newest ledger entry's.
CREATE FUNCTION account_balance_matches_ledger() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    newest bigint;
BEGIN
    IF NEW.balance_minor = OLD.balance_minor AND NEW.ledger_seq = OLD.ledger_seq THEN
        RETURN NEW;
    END IF;
    SELECT balance_after_minor INTO newest
    FROM ledger_entries WHERE account_id = NEW.id AND seq = NEW.ledger_seq;
    IF NOT FOUND OR newest <> NEW.balance_minor OR NEW.ledger_seq < OLD.ledger_seq
        OR EXISTS (SELECT 1 FROM ledger_entries WHERE account_id = NEW.id AND seq > NEW.ledger_seq) THEN
        RAISE EXCEPTION 'the balance of account % must equal its newest ledger entry', NEW.id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER accounts_balance_from_ledger BEFORE UPDATE ON accounts
    FOR EACH ROW EXECUTE FUNCTION account_balance_matches_ledger();
CREATE FUNCTION account_starts_empty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.balance_minor <> 0 OR NEW.ledger_seq <> 0 THEN
        RAISE EXCEPTION 'a new account starts with a zero balance and no ledger';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER accounts_start_empty BEFORE INSERT ON accounts
    FOR EACH ROW EXECUTE FUNCTION account_starts_empty();

-- The outbox (and processed_events) are the platform's shared tables:
-- crates/platform/migrations creates them before this migration runs.
