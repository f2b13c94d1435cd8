-- Mail and webhooks have workers of their own: each claims only its
-- channel's due rows.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (channel, next_attempt_time) WHERE state = 'pending';

-- The deliveries in flight (leased) per target: a webhook claim counts them
-- to keep each endpoint within its limit. Few rows: a lease is cleared when
-- its attempt is recorded.
CREATE INDEX deliveries_in_flight ON deliveries (channel, target)
    WHERE state = 'pending' AND lease_until IS NOT NULL;
