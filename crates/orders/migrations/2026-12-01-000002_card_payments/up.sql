-- The buyer's payment method at the card gateway, for external payments
-- (the saga confirms the payment intent with it, and a resumed saga needs it).
ALTER TABLE orders ADD COLUMN payment_method_id text
    CHECK (payment_method_id ~ '^[A-Za-z0-9_]{1,255}$');
ALTER TABLE orders ADD CONSTRAINT orders_external_names_a_payment_method
    CHECK ((payment_method = 'external') = (payment_method_id IS NOT NULL));

-- Card gateway webhook events already handled, by the gateway's event id: a
-- redelivered event changes nothing.
CREATE TABLE card_gateway_events (
    id text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 255),
    event_type text NOT NULL,
    object_id text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
