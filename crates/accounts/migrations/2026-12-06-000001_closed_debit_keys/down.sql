DROP TABLE closed_debit_keys;
DROP TYPE debit_key_state;
