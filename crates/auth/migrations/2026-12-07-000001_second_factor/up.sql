-- A second factor: TOTP (RFC 6238) with single-use recovery codes.

-- One authenticator per user. The secret is sealed under the key-encryption
-- key whose fingerprint `sealed_with` names (NULL: stored in the clear, when
-- auth runs without one), as the signing keys are. Pending until a first code
-- confirms it (`confirmed_at`); only a confirmed one is asked for at sign-in.
CREATE TABLE totp_factors (
    user_id uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret bytea NOT NULL,
    sealed_with text,
    -- The last time step (Unix time / 30) whose code was accepted: codes of
    -- it and of earlier steps are refused, so a code works once.
    last_used_step bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    confirmed_at timestamptz
);

-- Ten per confirmed factor, stored only as SHA-256 hashes (bound to the
-- user); each works once. Disabling the factor deletes them.
CREATE TABLE totp_recovery_codes (
    user_id uuid NOT NULL REFERENCES totp_factors (user_id) ON DELETE CASCADE,
    code_hash bytea NOT NULL CHECK (length(code_hash) = 32),
    used_at timestamptz,
    PRIMARY KEY (user_id, code_hash)
);

-- Sign-ins whose first factor passed and that wait for the second: found by
-- the SHA-256 of their token, single-use (deleted when completed),
-- short-lived, bound to the client address that started them and to the
-- credentials they were started with (the SHA-256 of the password hash then
-- verified, so a password changed meanwhile voids them).
CREATE TABLE login_challenges (
    token_hash bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    credentials_hash bytea NOT NULL CHECK (length(credentials_hash) = 32),
    client_address text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX login_challenges_by_user ON login_challenges (user_id);
CREATE INDEX login_challenges_by_expiry ON login_challenges (expires_at);
