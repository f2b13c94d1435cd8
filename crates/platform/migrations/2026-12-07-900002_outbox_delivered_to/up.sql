-- The subscribers that have accepted an outbox event (NULL: none yet), so a
-- retried event goes only to those that have not.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS delivered_to text[];
