-- Webhook endpoints Portcullis delivers its own events to (Standard Webhooks), and the outbox
-- of deliveries with their attempts (the delivery log). Secrets are sealed (AES-256-GCM under
-- the master key, bound to the endpoint id) by the domain before they reach the store; the
-- store cannot open them. Rotation keeps the replaced secret in previous_secret, signing too
-- until previous_expires_at. events is a JSON array of strings.
CREATE TABLE webhook_endpoints (
    id                  TEXT    PRIMARY KEY,
    url                 TEXT    NOT NULL,
    description         TEXT    NOT NULL,
    events              TEXT    NOT NULL,
    secret              BLOB    NOT NULL,
    previous_secret     BLOB,
    previous_expires_at INTEGER,
    created_at          INTEGER NOT NULL,
    rotated_at          INTEGER,
    disabled_at         INTEGER,
    disabled_reason     TEXT,
    CHECK ((previous_secret IS NULL) = (previous_expires_at IS NULL))
) STRICT;

-- id is the Standard Webhooks webhook-id (msg_…), the same on every attempt. payload is the
-- exact JSON body sent. last_status is the HTTP status of the last attempt (NULL: no answer).
CREATE TABLE webhook_deliveries (
    id              TEXT    PRIMARY KEY,
    endpoint_id     TEXT    NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_type      TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_attempt_at INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER
) STRICT;

-- Due pending deliveries, oldest due first (the worker's claim).
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id)
    WHERE status = 'pending';
-- An endpoint's delivery log, newest first (and the cascade on delete).
CREATE INDEX webhook_deliveries_by_endpoint
    ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);
-- Retention of finished deliveries.
CREATE INDEX webhook_deliveries_done ON webhook_deliveries (created_at)
    WHERE status <> 'pending';
