-- processed_events rows are deleted after their retention, oldest first, a
-- batch at a time: the index finds them without reading the whole table.
CREATE INDEX IF NOT EXISTS processed_events_processed_at ON processed_events (processed_at);
