-- The W3C traceparent of the call that placed the order: the saga's later
-- steps (the resumer's retries) continue the order's trace under it.
ALTER TABLE orders ADD COLUMN traceparent text CHECK (length(traceparent) <= 256);
