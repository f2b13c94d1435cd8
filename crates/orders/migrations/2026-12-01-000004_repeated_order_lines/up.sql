-- A product may appear in several lines of one order (each line is kept as
-- the buyer gave it); a line is still one product, 1 to 1000 units.
ALTER TABLE order_items DROP CONSTRAINT order_items_order_id_product_id_key;
