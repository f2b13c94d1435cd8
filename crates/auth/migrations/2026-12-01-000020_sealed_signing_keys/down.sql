ALTER TABLE signing_keys DROP COLUMN sealed_with;
DELETE FROM signing_keys WHERE private_key IS NULL;
ALTER TABLE signing_keys ALTER COLUMN private_key SET NOT NULL;
