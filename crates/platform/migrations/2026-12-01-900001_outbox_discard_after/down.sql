DROP INDEX IF EXISTS outbox_discard_after;
ALTER TABLE outbox DROP COLUMN IF EXISTS discard_after;
