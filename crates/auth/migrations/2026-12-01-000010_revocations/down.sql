DROP TABLE revocations;
DROP FUNCTION revocation_notify();
