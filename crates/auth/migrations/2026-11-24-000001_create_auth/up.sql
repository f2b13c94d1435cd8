-- People who can sign in. Emails are stored normalized (trimmed, lower case).
CREATE TABLE users (
    id uuid PRIMARY KEY,
    email text NOT NULL UNIQUE CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
    -- PHC string: the algorithm and its parameters travel with the hash.
    password_hash text NOT NULL,
    roles text[] NOT NULL DEFAULT '{user}' CHECK (cardinality(roles) > 0 AND roles <@ ARRAY['user', 'admin']),
    email_verified boolean NOT NULL DEFAULT false,
    disabled boolean NOT NULL DEFAULT false,
    -- The idempotency key of the Register call that created the user.
    register_request_id text UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One sign-in: every refresh token issued from one Login (a token family).
CREATE TABLE sessions (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    revoke_reason text,
    user_agent text NOT NULL DEFAULT '',
    client_address text NOT NULL DEFAULT ''
);
CREATE INDEX sessions_active_by_user ON sessions (user_id, id DESC) WHERE revoked_at IS NULL;

-- Refresh tokens, stored only as SHA-256 hashes. Spent tokens stay so that
-- their reuse is recognised and revokes the family.
CREATE TABLE refresh_tokens (
    token_hash bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    spent_at timestamptz
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

-- Single-use tokens mailed to users, stored only as SHA-256 hashes.
CREATE TABLE one_time_tokens (
    token_hash bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose text NOT NULL CHECK (purpose IN ('password_reset', 'email_verification')),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz
);
CREATE INDEX one_time_tokens_by_user ON one_time_tokens (user_id, purpose);

-- Failed logins within the throttling window, per account and per client
-- address ('account:<email>', 'address:<ip>').
CREATE TABLE login_failures (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject text NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_by_subject ON login_failures (subject, failed_at);

-- Ed25519 signing keys; the newest signs, the newest two are published.
CREATE TABLE signing_keys (
    kid text PRIMARY KEY,
    private_key bytea NOT NULL,
    public_key bytea NOT NULL CHECK (length(public_key) = 32),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The outbox (and processed_events) are the platform's shared tables:
-- crates/platform/migrations creates them before this migration runs.
