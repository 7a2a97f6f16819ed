-- Portcullis durable store, initial schema.
--
-- Times are INTEGER milliseconds since the Unix epoch. JSON columns hold serde_json text.
-- Hashes are raw 32-byte SHA-256 digests (never raw secrets).

CREATE TABLE api_keys (
    id             TEXT    NOT NULL PRIMARY KEY,
    hash           BLOB    NOT NULL UNIQUE CHECK (length(hash) = 32),
    name           TEXT    NOT NULL,
    owner          TEXT,
    display_prefix TEXT    NOT NULL,
    scopes         TEXT    NOT NULL, -- JSON array of strings
    metadata       TEXT    NOT NULL, -- JSON value (an object)
    rate_limits    TEXT    NOT NULL, -- JSON array of RateLimitSpec
    quota          TEXT,             -- JSON QuotaSpec, NULL when the key has none
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER,
    revoked_at     INTEGER,
    rotated_from   TEXT,
    rotated_to     TEXT,
    last_used_at   INTEGER,
    last_used_ip   TEXT,
    origin         TEXT    NOT NULL,
    quota_window   INTEGER NOT NULL DEFAULT 0,
    quota_used     INTEGER NOT NULL DEFAULT 0 CHECK (quota_used >= 0)
) STRICT;

-- `list(owner, after, limit)`: equality on owner, then ordered by id.
CREATE INDEX api_keys_owner ON api_keys (owner, id);

-- Addresses each key has been used from (new-address detection).
CREATE TABLE api_key_ips (
    key_id     TEXT    NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    ip         TEXT    NOT NULL,
    first_seen INTEGER NOT NULL,
    PRIMARY KEY (key_id, ip)
) STRICT, WITHOUT ROWID;

-- The tamper-evident audit chain, stored in blocks: one row per appended batch.
--
-- Authentication decisions are audited at request rate; a row (and its index entries) per
-- event costs more than the request it records. A block row holds a batch of events as text,
-- one line per event (see `sqlite::encode_event`), each line carrying its own seq and hash
-- (and prev_hash), so that the chain is checked event by event exactly as before. The text is
-- stored LZ4-compressed (`sqlite::pack_block_text`): a quarter of the bytes to write twice
-- (WAL, then checkpoint) and to keep. `kinds`, `outcomes` and `credentials` list
-- (tab-delimited) the distinct values in the block, so a filtered query skips blocks without
-- decompressing them.
CREATE TABLE audit_blocks (
    first_seq   INTEGER PRIMARY KEY CHECK (first_seq > 0),
    last_seq    INTEGER NOT NULL CHECK (last_seq >= first_seq),
    min_time    INTEGER NOT NULL,
    max_time    INTEGER NOT NULL,
    kinds       TEXT    NOT NULL,
    outcomes    TEXT    NOT NULL,
    credentials TEXT    NOT NULL,
    events      BLOB    NOT NULL
) STRICT;
