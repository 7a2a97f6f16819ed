-- Access tokens revoked before their expiry (RFC 7009), by jti, kept until they would have
-- expired anyway.
CREATE TABLE revoked_tokens (
    jti        TEXT    PRIMARY KEY,
    expires_at INTEGER NOT NULL
) STRICT;
