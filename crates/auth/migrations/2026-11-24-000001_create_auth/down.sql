DROP TABLE signing_keys;
DROP TABLE login_failures;
DROP TABLE one_time_tokens;
DROP TABLE refresh_tokens;
DROP TABLE sessions;
DROP TABLE users;
