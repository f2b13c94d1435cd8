-- The ways to reach a user; the service maps them to a Rust enum that refuses
-- any other value.
CREATE TYPE channel AS ENUM ('email', 'webhook', 'in_app');
-- Where a delivery is: waiting for (another) attempt, done, dead-lettered, or
-- dropped because its target went away (a deleted or disabled endpoint).
CREATE TYPE delivery_state AS ENUM ('pending', 'delivered', 'dead', 'dropped');

-- Where each user's mail goes, learned from auth's events (a service never
-- reads another's database).
CREATE TABLE recipients (
    user_id uuid PRIMARY KEY,
    email text NOT NULL CHECK (length(email) BETWEEN 3 AND 320),
    update_time timestamptz NOT NULL DEFAULT now()
);

-- One row per user who has an inbox: it serializes a user's inserts, so the
-- inbox's sequence numbers commit in order and a live stream never skips one.
CREATE TABLE inboxes (
    user_id uuid PRIMARY KEY,
    last_seq bigint NOT NULL DEFAULT 0
);

CREATE TABLE notifications (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES inboxes (user_id),
    -- The user's sequence number: streams and pages order by it.
    seq bigint NOT NULL,
    event_type text NOT NULL,
    event_id uuid NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    read_time timestamptz,
    create_time timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, seq),
    UNIQUE (event_id, user_id)
);
CREATE INDEX notifications_unread ON notifications (user_id, seq) WHERE read_time IS NULL;

-- Users who changed their preferences; everyone else has the defaults.
CREATE TABLE preferences (
    user_id uuid PRIMARY KEY,
    default_channels channel[] NOT NULL,
    -- {"order.paid": ["in_app"], ...}: per event type overrides.
    event_types jsonb NOT NULL DEFAULT '{}',
    -- Bumped on every change; the etag.
    version bigint NOT NULL DEFAULT 1,
    update_time timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_endpoints (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    url text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    -- Empty: every event type.
    event_types text[] NOT NULL DEFAULT '{}',
    description text NOT NULL DEFAULT '' CHECK (length(description) <= 256),
    -- The signing secret's 32 bytes, sealed with KEEL_NOTIFICATIONS_SECRETS_KEY
    -- when it is set (`sealed_with` names that key), else as they are.
    secret bytea NOT NULL,
    -- The secret before the last rotation, signing too until it expires.
    previous_secret bytea,
    previous_secret_expire_time timestamptz,
    sealed_with text,
    -- Since when every delivery has failed; NULL after a success.
    failing_since timestamptz,
    disable_time timestamptz,
    disable_reason text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_by_user ON webhook_endpoints (user_id, id);

-- One row per (event, channel, target): what the delivery workers send, at
-- least once, each attempt claimed with FOR UPDATE SKIP LOCKED and leased.
CREATE TABLE deliveries (
    id uuid PRIMARY KEY,
    event_id uuid NOT NULL,
    channel channel NOT NULL,
    -- The address (email) or the endpoint id (webhook).
    target text NOT NULL,
    user_id uuid NOT NULL,
    event_type text NOT NULL,
    -- The event as delivered to the sink (its secrets still sealed); the
    -- message is rendered from it at each attempt. Cleared once delivered.
    event bytea,
    state delivery_state NOT NULL DEFAULT 'pending',
    attempt_count integer NOT NULL DEFAULT 0,
    next_attempt_time timestamptz NOT NULL DEFAULT now(),
    -- Whoever claimed the attempt holds it until then.
    lease_until timestamptz,
    last_status integer,
    last_error text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now(),
    finish_time timestamptz,
    UNIQUE (event_id, channel, target)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_time) WHERE state = 'pending';

-- Deliveries given up on; an admin may redeliver each once.
CREATE TABLE dead_letters (
    id uuid PRIMARY KEY,
    delivery_id uuid NOT NULL REFERENCES deliveries (id),
    channel channel NOT NULL,
    target text NOT NULL,
    user_id uuid NOT NULL,
    event_id uuid NOT NULL,
    event_type text NOT NULL,
    payload text NOT NULL,
    attempt_count integer NOT NULL,
    last_status integer,
    last_error text NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    redeliver_time timestamptz
);
CREATE INDEX dead_letters_listed ON dead_letters (id DESC) WHERE redeliver_time IS NULL;

-- The key that signs unsubscribe links: made at first start, shared by every
-- replica, so links outlive restarts.
CREATE TABLE link_keys (
    id integer PRIMARY KEY CHECK (id = 1),
    key bytea NOT NULL CHECK (length(key) = 32)
);
