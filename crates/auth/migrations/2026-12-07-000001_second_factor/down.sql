DROP TABLE login_challenges;
DROP TABLE totp_recovery_codes;
DROP TABLE totp_factors;
