-- Postgres cannot drop an enum value: rebuild the type without it.
UPDATE orders SET refund_state = 'due' WHERE refund_state = 'failed';
ALTER TYPE refund_state RENAME TO refund_state_with_failed;
CREATE TYPE refund_state AS ENUM ('not_needed', 'unknown', 'due', 'done');
ALTER TABLE orders ALTER COLUMN refund_state DROP DEFAULT;
ALTER TABLE orders ALTER COLUMN refund_state TYPE refund_state USING refund_state::text::refund_state;
ALTER TABLE orders ALTER COLUMN refund_state SET DEFAULT 'not_needed';
DROP TYPE refund_state_with_failed;
