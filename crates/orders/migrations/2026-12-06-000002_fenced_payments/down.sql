DROP TRIGGER orders_states_move_forward ON orders;
DROP FUNCTION order_states_move_forward();
DROP TABLE order_state_moves;
ALTER TABLE orders
    DROP CONSTRAINT orders_paid_means_charged,
    DROP CONSTRAINT orders_charged_names_its_charge,
    DROP CONSTRAINT orders_refund_of_a_charge,
    DROP CONSTRAINT orders_unknown_refund_of_an_unknown_charge,
    DROP CONSTRAINT orders_cancelled_owes_nothing_only_when_not_charged,
    DROP COLUMN payment_state,
    DROP COLUMN claim;
DROP TYPE payment_state;
