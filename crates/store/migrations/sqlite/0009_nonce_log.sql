-- Spent single-use values as an append-only log: a batch of claims adds rows at the end of
-- the table (a page or two) instead of dirtying one random page of a keyed b-tree per claim.
-- Which keys are live is kept in memory by the store (one process owns the database), loaded
-- from here when it opens; a key taken over after it expired has a newer row. used_nonces
-- (0006) is no longer written: its rows move here once.
CREATE TABLE nonce_log (
    seq        INTEGER PRIMARY KEY,
    key        TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX nonce_log_expires ON nonce_log (expires_at);
INSERT INTO nonce_log (key, expires_at) SELECT key, expires_at FROM used_nonces;
DELETE FROM used_nonces;
