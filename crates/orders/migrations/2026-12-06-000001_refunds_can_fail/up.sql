-- A refund the provider refuses for good (not a timeout: a definite "no") is
-- parked here for an operator, instead of being retried forever.
-- Its own migration: a new enum value can be used only once it is committed.
ALTER TYPE refund_state ADD VALUE IF NOT EXISTS 'failed';
