-- Where an order is in its life cycle; the service maps it to a Rust enum
-- that refuses any other value.
CREATE TYPE order_status AS ENUM ('pending_payment', 'paid', 'shipped', 'delivered', 'cancelled');
CREATE TYPE payment_method AS ENUM ('account_balance', 'external');
-- What a cancelled order still owes its buyer: nothing, a refund, or first
-- finding out whether a charge whose outcome was unknown went through.
CREATE TYPE refund_state AS ENUM ('not_needed', 'unknown', 'due', 'done');

CREATE TABLE products (
    id uuid PRIMARY KEY,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description text NOT NULL DEFAULT '' CHECK (length(description) <= 4000),
    price_minor bigint NOT NULL CHECK (price_minor > 0),
    currency text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- Units that may be ordered now; reserved units are already subtracted.
    stock_quantity bigint NOT NULL CHECK (stock_quantity >= 0),
    -- The stock it was created with: with the adjustments and the units in
    -- live orders it accounts for every unit (tests check it).
    initial_stock bigint NOT NULL CHECK (initial_stock >= 0),
    -- Bumped on every change, stock included; the etag.
    version bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Every AdjustStock that applied, once per (product, request id).
CREATE TABLE stock_adjustments (
    id uuid PRIMARY KEY,
    product_id uuid NOT NULL REFERENCES products (id),
    request_id text NOT NULL CHECK (length(request_id) BETWEEN 1 AND 128),
    delta bigint NOT NULL CHECK (delta <> 0),
    reason text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (product_id, request_id)
);

CREATE TABLE orders (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    -- The buyer's idempotency key: one order per (user, key).
    request_id text NOT NULL CHECK (length(request_id) BETWEEN 1 AND 128),
    status order_status NOT NULL DEFAULT 'pending_payment',
    payment_method payment_method NOT NULL,
    total_minor bigint NOT NULL CHECK (total_minor > 0),
    currency text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- The payment provider's reference for the charge (a ledger debit, a
    -- payment intent), once known.
    charge_reference text,
    refund_state refund_state NOT NULL DEFAULT 'not_needed',
    -- Why it was cancelled (a stable reason such as INSUFFICIENT_FUNDS).
    cancel_reason text,
    -- The CancelOrder request id that cancelled it, for retries.
    cancel_request_id text,
    -- Unpaid past this, the resumer cancels it.
    payment_deadline timestamptz NOT NULL,
    -- Whoever works on its payment holds it until then (the resumer skips it).
    lease_until timestamptz,
    version bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, request_id),
    CHECK ((status = 'cancelled') = (cancel_reason IS NOT NULL)),
    CHECK (status = 'cancelled' OR refund_state = 'not_needed'),
    CHECK (status IN ('pending_payment', 'cancelled') OR charge_reference IS NOT NULL),
    CHECK (refund_state NOT IN ('due', 'done') OR charge_reference IS NOT NULL)
);
CREATE INDEX orders_by_user ON orders (user_id, id DESC);
-- What the resumer looks for.
CREATE INDEX orders_unfinished ON orders (created_at)
    WHERE status = 'pending_payment' OR refund_state IN ('unknown', 'due');

-- The lines of an order, with the product's name and price when it was placed.
CREATE TABLE order_items (
    order_id uuid NOT NULL REFERENCES orders (id),
    position int NOT NULL CHECK (position >= 0),
    product_id uuid NOT NULL REFERENCES products (id),
    product_name text NOT NULL,
    quantity int NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
    unit_price_minor bigint NOT NULL CHECK (unit_price_minor > 0),
    currency text NOT NULL,
    PRIMARY KEY (order_id, position),
    UNIQUE (order_id, product_id)
);

-- The outbox (and processed_events) are the platform's shared tables:
-- crates/platform/migrations creates them before this migration runs.
