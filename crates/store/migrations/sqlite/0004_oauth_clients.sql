-- OAuth 2.0 clients. The secret is kept as its SHA-256 only (a generated 256-bit secret needs
-- no slow hash); lists are JSON arrays of strings.
CREATE TABLE oauth_clients (
    id               TEXT    PRIMARY KEY,
    name             TEXT    NOT NULL,
    confidential     INTEGER NOT NULL CHECK (confidential IN (0, 1)),
    grant_types      TEXT    NOT NULL,
    scopes           TEXT    NOT NULL,
    audiences        TEXT    NOT NULL,
    redirect_uris    TEXT    NOT NULL,
    auth_method      TEXT    NOT NULL,
    token_lifetime_s INTEGER,
    secret_hash      BLOB    CHECK (secret_hash IS NULL OR length(secret_hash) = 32),
    created_at       INTEGER NOT NULL,
    secret_set_at    INTEGER
) STRICT;
