DROP TABLE order_items;
DROP TABLE orders;
DROP TABLE stock_adjustments;
DROP TABLE products;
DROP TYPE refund_state;
DROP TYPE payment_method;
DROP TYPE order_status;
