-- The keys Portcullis signs tokens with. The private half is sealed (AES-256-GCM under the
-- master key, bound to the kid) by the domain before it reaches the store; the store cannot
-- open it. A key signs from activates_at until retires_at, and is published in the JWKS from
-- its creation until expires_at (the end of the longest token it can have signed).
CREATE TABLE signing_keys (
    kid            TEXT    PRIMARY KEY,
    alg            TEXT    NOT NULL,
    private_sealed BLOB    NOT NULL,
    public_jwk     TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    activates_at   INTEGER NOT NULL,
    retires_at     INTEGER,
    expires_at     INTEGER
) STRICT;
