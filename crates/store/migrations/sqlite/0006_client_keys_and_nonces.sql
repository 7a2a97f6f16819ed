-- Clients that authenticate with private_key_jwt (RFC 7523) register public keys: a JWKS
-- document (public keys only, so it is stored as it is).
ALTER TABLE oauth_clients ADD COLUMN jwks TEXT;

-- Single-use values (a client assertion's jti, later DPoP proofs and request nonces), kept
-- until the credential that carried them could no longer be accepted anyway.
CREATE TABLE used_nonces (
    key        TEXT    PRIMARY KEY,
    expires_at INTEGER NOT NULL
) STRICT;
