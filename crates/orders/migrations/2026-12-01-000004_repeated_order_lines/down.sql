ALTER TABLE order_items ADD CONSTRAINT order_items_order_id_product_id_key UNIQUE (order_id, product_id);
