-- Sign-in with external OpenID Providers.

-- A user's accounts at providers, keyed by (issuer, subject): never by
-- email, which a provider may let anyone claim.
CREATE TABLE external_identities (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider text NOT NULL,
    issuer text NOT NULL,
    subject text NOT NULL,
    email text,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_sign_in_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (issuer, subject)
);
CREATE INDEX external_identities_user ON external_identities (user_id);

-- Sign-ins sent to a provider and not yet back: found by the hash of their
-- `state`, bound to the browser that started them (the hash of its cookie),
-- single-use, short-lived.
CREATE TABLE provider_sign_ins (
    state_hash bytea PRIMARY KEY,
    provider text NOT NULL,
    browser_hash bytea NOT NULL,
    nonce text NOT NULL,
    pkce_verifier text NOT NULL,
    return_url text NOT NULL,
    app_code_challenge text NOT NULL,
    link_user_id uuid REFERENCES users (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX provider_sign_ins_expiry ON provider_sign_ins (expires_at);

-- The one-time codes a finished sign-in hands the application (by its
-- return URL), exchanged for tokens with the application's PKCE verifier.
CREATE TABLE sign_in_codes (
    code_hash bytea PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider text NOT NULL,
    app_code_challenge text NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sign_in_codes_expiry ON sign_in_codes (expires_at);
