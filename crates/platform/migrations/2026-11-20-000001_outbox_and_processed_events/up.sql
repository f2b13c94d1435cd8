-- The tables every service's database has, defined here once and applied
-- before the service's own migrations. Written IF NOT EXISTS: databases made
-- before this migration existed created the same tables in their service's
-- first migration, and adopt them unchanged.

-- Events waiting for delivery (the transactional outbox).
CREATE TABLE IF NOT EXISTS outbox (
    id uuid PRIMARY KEY,
    event_type text NOT NULL,
    payload bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error text
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (next_attempt_at) WHERE published_at IS NULL;

-- Events a consumer has applied: the consumer's idempotency record.
CREATE TABLE IF NOT EXISTS processed_events (
    event_id uuid PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);
