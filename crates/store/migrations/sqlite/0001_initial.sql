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

-- The tamper-evident audit chain. `seq` is the rowid, so appends go to the end of the table.
CREATE TABLE audit_events (
    seq           INTEGER PRIMARY KEY CHECK (seq > 0),
    time          INTEGER NOT NULL,
    kind          TEXT    NOT NULL,
    outcome       TEXT    NOT NULL,
    credential_id TEXT,
    body          TEXT    NOT NULL,
    prev_hash     BLOB    NOT NULL CHECK (length(prev_hash) = 32),
    hash          BLOB    NOT NULL CHECK (length(hash) = 32)
) STRICT;

-- Filters of `AuditQuery`, newest first: every index ends in the rowid (seq) implicitly, so
-- `WHERE kind = ? ORDER BY seq DESC` walks the index backwards without sorting.
CREATE INDEX audit_events_kind ON audit_events (kind);
CREATE INDEX audit_events_outcome ON audit_events (outcome);
CREATE INDEX audit_events_credential ON audit_events (credential_id)
    WHERE credential_id IS NOT NULL;
CREATE INDEX audit_events_time ON audit_events (time);
