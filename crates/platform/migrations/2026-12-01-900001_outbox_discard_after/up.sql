-- An event that carries a secret (a sealed one-time token) is deleted when
-- that secret expires, delivered or not, instead of waiting out the retention
-- period.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS discard_after timestamptz;
CREATE INDEX IF NOT EXISTS outbox_discard_after ON outbox (discard_after) WHERE discard_after IS NOT NULL;
