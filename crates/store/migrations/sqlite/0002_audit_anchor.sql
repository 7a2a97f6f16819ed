-- Audit retention (`AuditLog::prune`) removes the oldest blocks; the last removed event's seq
-- and hash stay here, so that verification starts from them and a removed run at the start of
-- the trail is told apart from a cut one. One row at most.
CREATE TABLE audit_anchor (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    seq       INTEGER NOT NULL CHECK (seq > 0),
    hash      BLOB    NOT NULL CHECK (length(hash) = 32)
) STRICT;
