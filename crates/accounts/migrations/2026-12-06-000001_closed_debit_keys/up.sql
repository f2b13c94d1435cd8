-- Debit keys that can never debit. A declined Debit is as final as a successful
-- one (a retry with its key answers the same decline, even after a deposit), and
-- VoidDebit closes a key that has not debited so that it never will.
CREATE TYPE debit_key_state AS ENUM ('declined', 'voided');

-- No foreign key to accounts: a Debit of an account that does not exist is
-- declined (and its key voidable) too.
CREATE TABLE closed_debit_keys (
    account_id uuid NOT NULL,
    -- The Debit's idempotency key. Never also the key of a ledger entry of the
    -- account: Debit and VoidDebit hold the key's lock, then the account's.
    request_id text NOT NULL CHECK (length(request_id) BETWEEN 1 AND 128),
    state debit_key_state NOT NULL,
    -- The stable reason the key answers with.
    reason text NOT NULL CHECK (
        (state = 'declined' AND reason IN ('INSUFFICIENT_FUNDS', 'CURRENCY_MISMATCH', 'ACCOUNT_NOT_FOUND'))
        OR (state = 'voided' AND reason = 'VOIDED')),
    -- What the declined Debit asked for, so a retry asking for something else is
    -- told the key is reused; NULL for a voided key, which no Debit asked.
    amount_minor bigint CHECK (amount_minor > 0),
    currency text,
    reference text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (CASE state
        WHEN 'declined' THEN amount_minor IS NOT NULL AND currency IS NOT NULL AND reference IS NOT NULL
        ELSE amount_minor IS NULL AND currency IS NULL AND reference IS NULL END),
    PRIMARY KEY (account_id, request_id)
);
