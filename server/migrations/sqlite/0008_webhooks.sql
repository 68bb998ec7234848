-- Outbound webhooks: the registered receivers, and the delivery queue (an outbox) that the transaction committing
-- an event fills with one row per webhook whose filter takes it. Shared by every instance on the database.
CREATE TABLE webhooks (
    id         BLOB    PRIMARY KEY NOT NULL,
    url        TEXT    NOT NULL,
    events     INTEGER NOT NULL, -- bit set of event types (domain/webhook.rs: WebhookEventType::bit)
    secret     TEXT    NOT NULL, -- whsec_<base64 of the signing key>
    created_at INTEGER NOT NULL
);

-- One row per (webhook, event) until it is delivered (then deleted) or given up on (state 2, kept for a while).
-- seq orders each session's events as they were committed; a delivery goes only once every earlier one of its
-- webhook and session has (no state-0 row before it). A dispatcher claims a row by setting lease_until and claim;
-- when the lease passes without an outcome (the dispatcher died), another may claim it again.
CREATE TABLE webhook_deliveries (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id      BLOB    NOT NULL,
    event_id        BLOB    NOT NULL, -- webhook-id of the delivery, the same on every attempt
    session_id      BLOB    NOT NULL,
    kind            TEXT    NOT NULL, -- session.created, message.created, ...
    body            TEXT    NOT NULL, -- the JSON POSTed, made once
    created_at      INTEGER NOT NULL, -- when the event was committed (epoch ms)
    state           INTEGER NOT NULL DEFAULT 0, -- 0 pending, 2 failed (delivered rows are deleted)
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER,
    claim           BLOB,
    last_error      TEXT
);
-- The pending rows of each (webhook, session) queue in order: finding its head, and what is before a row.
CREATE INDEX webhook_deliveries_queue ON webhook_deliveries (webhook_id, session_id, seq) WHERE state = 0;
-- Failed rows, by age, for their purge.
CREATE INDEX webhook_deliveries_failed ON webhook_deliveries (created_at) WHERE state = 2;
