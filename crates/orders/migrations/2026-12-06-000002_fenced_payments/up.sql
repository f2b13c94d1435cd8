-- Payments under concurrency (docs/architecture.md, "Payments under
-- concurrency").

-- The fencing token: whoever works on an order's payment (CreateOrder, the
-- resumer, a cancel, a webhook) first claims it, which bumps `claim`; every
-- later write of that worker names the value it got, so a worker whose claim
-- was taken over writes nothing more and makes no further external call.
ALTER TABLE orders ADD COLUMN claim bigint NOT NULL DEFAULT 0 CHECK (claim >= 0);

-- Where the charge is, apart from the order's status: nothing sent yet that
-- could take money; a call that may take money is (or was) under way and its
-- outcome is unknown; taken; definitely not taken (declined, or voided so that
-- it never can be).
CREATE TYPE payment_state AS ENUM ('unpaid', 'charging', 'charged', 'declined', 'voided');
ALTER TABLE orders ADD COLUMN payment_state payment_state NOT NULL DEFAULT 'unpaid';
UPDATE orders SET payment_state = (CASE
    WHEN status IN ('paid', 'shipped', 'delivered') OR refund_state IN ('due', 'done', 'failed') THEN 'charged'
    WHEN status = 'cancelled' AND refund_state = 'not_needed' THEN 'voided'
    ELSE 'charging'
END)::payment_state;

ALTER TABLE orders
    ADD CONSTRAINT orders_paid_means_charged
        CHECK (status NOT IN ('paid', 'shipped', 'delivered') OR payment_state = 'charged'),
    ADD CONSTRAINT orders_charged_names_its_charge
        CHECK (payment_state <> 'charged' OR charge_reference IS NOT NULL),
    ADD CONSTRAINT orders_refund_of_a_charge
        CHECK (refund_state NOT IN ('due', 'done', 'failed') OR payment_state = 'charged'),
    ADD CONSTRAINT orders_unknown_refund_of_an_unknown_charge
        CHECK (refund_state <> 'unknown' OR payment_state = 'charging'),
    ADD CONSTRAINT orders_cancelled_owes_nothing_only_when_not_charged
        CHECK (status <> 'cancelled' OR refund_state <> 'not_needed' OR payment_state IN ('declined', 'voided'));

-- The moves each state may make: the same list as `OrderStatus::apply`,
-- `PaymentState::MOVES` and `RefundState::MOVES` in the code (a test compares
-- them). A late or stale answer can never move a state back.
CREATE TABLE order_state_moves (
    machine text NOT NULL CHECK (machine IN ('status', 'payment', 'refund')),
    from_state text NOT NULL,
    to_state text NOT NULL,
    PRIMARY KEY (machine, from_state, to_state)
);
INSERT INTO order_state_moves (machine, from_state, to_state) VALUES
    ('status', 'pending_payment', 'paid'),
    ('status', 'pending_payment', 'cancelled'),
    ('status', 'paid', 'shipped'),
    ('status', 'paid', 'cancelled'),
    ('status', 'shipped', 'delivered'),
    ('payment', 'unpaid', 'charging'),
    ('payment', 'unpaid', 'declined'),
    ('payment', 'unpaid', 'voided'),
    ('payment', 'charging', 'charged'),
    ('payment', 'charging', 'declined'),
    ('payment', 'charging', 'voided'),
    ('refund', 'not_needed', 'unknown'),
    ('refund', 'not_needed', 'due'),
    ('refund', 'unknown', 'not_needed'),
    ('refund', 'unknown', 'due'),
    ('refund', 'unknown', 'done'),
    ('refund', 'due', 'done'),
    ('refund', 'due', 'failed'),
    ('refund', 'failed', 'done');

CREATE FUNCTION order_states_move_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> OLD.status AND NOT EXISTS (SELECT 1 FROM order_state_moves
            WHERE machine = 'status' AND from_state = OLD.status::text AND to_state = NEW.status::text) THEN
        RAISE EXCEPTION 'order %: status cannot move from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.payment_state <> OLD.payment_state AND NOT EXISTS (SELECT 1 FROM order_state_moves
            WHERE machine = 'payment' AND from_state = OLD.payment_state::text
              AND to_state = NEW.payment_state::text) THEN
        RAISE EXCEPTION 'order %: payment cannot move from % to %', OLD.id, OLD.payment_state, NEW.payment_state
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.refund_state <> OLD.refund_state AND NOT EXISTS (SELECT 1 FROM order_state_moves
            WHERE machine = 'refund' AND from_state = OLD.refund_state::text
              AND to_state = NEW.refund_state::text) THEN
        RAISE EXCEPTION 'order %: refund cannot move from % to %', OLD.id, OLD.refund_state, NEW.refund_state
            USING ERRCODE = 'check_violation';
    END IF;
    -- Something is owed only from the moment of cancelling on.
    IF OLD.refund_state = 'not_needed' AND NEW.refund_state <> 'not_needed' AND OLD.status = 'cancelled' THEN
        RAISE EXCEPTION 'order %: a refund becomes owed only when it is cancelled', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    -- The stored charge is the one every later step acts on: never replaced.
    IF OLD.charge_reference IS NOT NULL AND NEW.charge_reference IS DISTINCT FROM OLD.charge_reference THEN
        RAISE EXCEPTION 'order %: its charge reference is % and stays so', OLD.id, OLD.charge_reference
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.claim < OLD.claim THEN
        RAISE EXCEPTION 'order %: its claim only grows', OLD.id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER orders_states_move_forward BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION order_states_move_forward();

