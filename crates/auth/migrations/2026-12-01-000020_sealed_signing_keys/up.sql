-- A private key is sealed under the key-encryption key whose fingerprint
-- `sealed_with` names (NULL: stored as plain PKCS#8, when auth runs without
-- one), and deleted once every token it signed has expired.
ALTER TABLE signing_keys ALTER COLUMN private_key DROP NOT NULL;
ALTER TABLE signing_keys ADD COLUMN sealed_with text;
