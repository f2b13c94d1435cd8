DROP TABLE sign_in_codes;
DROP TABLE provider_sign_ins;
DROP TABLE external_identities;
