-- The confusable skeleton (Unicode UTS #39) of each user's email: addresses that
-- look alike (`admin@` and `аdmin@` with a Cyrillic а) share one, and the unique
-- index lets only one account have it, whatever registrations race.
--
-- SQL cannot compute a skeleton (it needs Unicode's confusables table), so rows
-- from before this migration are filled in by auth when it starts
-- (`Auth::build`); every new user is inserted with one.
ALTER TABLE users ADD COLUMN email_skeleton text;
CREATE UNIQUE INDEX users_email_skeleton_key ON users (email_skeleton);
