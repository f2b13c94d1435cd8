DROP TABLE card_gateway_events;
ALTER TABLE orders DROP CONSTRAINT orders_external_names_a_payment_method;
ALTER TABLE orders DROP COLUMN payment_method_id;
