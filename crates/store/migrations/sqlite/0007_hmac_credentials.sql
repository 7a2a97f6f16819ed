-- Partners' credentials for signed requests: a public key id (the X-API-Key, the SigV4 access
-- key id, the RFC 9421 keyid) and a shared secret, or instead a registered public key (PEM
-- SubjectPublicKeyInfo) with its RFC 9421 algorithm name. Secrets are sealed (AES-256-GCM
-- under the master key) by the domain before they reach the store; the store cannot open them.
-- Rotation keeps the replaced secret in previous_secret, accepted until previous_expires_at.
-- scopes is a JSON array of strings.
CREATE TABLE hmac_credentials (
    key_id              TEXT    PRIMARY KEY,
    name                TEXT    NOT NULL,
    scopes              TEXT    NOT NULL,
    secret              BLOB,
    previous_secret     BLOB,
    previous_expires_at INTEGER,
    public_key          TEXT,
    public_key_alg      TEXT,
    created_at          INTEGER NOT NULL,
    rotated_at          INTEGER,
    revoked_at          INTEGER,
    -- Exactly one of a secret and a public key.
    CHECK ((secret IS NULL) <> (public_key IS NULL)),
    CHECK ((public_key IS NULL) = (public_key_alg IS NULL)),
    -- A previous secret only next to a current one, and always with its deadline.
    CHECK (previous_secret IS NULL OR secret IS NOT NULL),
    CHECK ((previous_secret IS NULL) = (previous_expires_at IS NULL))
) STRICT;
