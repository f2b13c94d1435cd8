DROP INDEX deliveries_in_flight;
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (next_attempt_time) WHERE state = 'pending';
