-- Access tokens that no longer count: every token of a session (a logout, a
-- revoked session) or of a user (changed password or roles, disabled) issued
-- before `not_before`. Verifiers in every service follow this table through
-- WatchRevocations; rows older than an access token's lifetime matter to no
-- one and are deleted.
CREATE TABLE revocations (
    sequence bigserial PRIMARY KEY,
    session_id uuid,
    user_id uuid,
    not_before timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((session_id IS NULL) <> (user_id IS NULL))
);
CREATE INDEX revocations_not_before ON revocations (not_before);

-- Followers wake on every new row, when its transaction commits.
CREATE FUNCTION revocation_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keel_revocations', NEW.sequence::text);
    RETURN NEW;
END $$;
CREATE TRIGGER revocations_notify AFTER INSERT ON revocations
    FOR EACH ROW EXECUTE FUNCTION revocation_notify();
