-- One counter row per throttled subject, replacing one row per failure: a
-- login decides its admission under the row locks of its subjects, so
-- attempts sent at once are counted exactly.
DROP TABLE login_failures;

CREATE TABLE throttle_counters (
    -- What is counted: 'login:address:<ip>', 'login:pair:<ip> <email>',
    -- 'login:account:<email>', 'register:address:<ip>', ...
    subject text PRIMARY KEY,
    -- The account (normalized email) a login counter belongs to, so that a
    -- password reset can clear all of them.
    account text,
    -- Attempts since window_start (for logins: failures, and attempts whose
    -- hash is still running).
    hits integer NOT NULL DEFAULT 0 CHECK (hits >= 0),
    window_start timestamptz NOT NULL DEFAULT now(),
    -- For a slowed-down account, when this address may try it next.
    not_before timestamptz,
    -- After this the row means nothing and is pruned.
    expires_at timestamptz NOT NULL
);
CREATE INDEX throttle_counters_by_account ON throttle_counters (account) WHERE account IS NOT NULL;
CREATE INDEX throttle_counters_by_expiry ON throttle_counters (expires_at);
