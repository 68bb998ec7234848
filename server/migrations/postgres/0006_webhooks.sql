-- Outbound webhooks: the registered receivers, and the delivery queue (an outbox) that the transaction committing
-- an event fills with one row per webhook whose filter takes it. Shared by every instance on the database.
CREATE TABLE webhooks (
    id         uuid   PRIMARY KEY,
    url        text   NOT NULL,
    events     bigint NOT NULL, -- bit set of event types (domain/webhook.rs: WebhookEventType::bit)
    secret     text   NOT NULL, -- whsec_<base64 of the signing key>
    created_at bigint NOT NULL
);

-- One row per (webhook, event) until it is delivered (then deleted) or given up on (state 2, kept for a while).
-- seq orders each session's events as they were committed (every write of a session holds the session's row
-- lock, so their seqs follow their commits); a delivery goes only once every earlier one of its webhook and
-- session has (no state-0 row before it). A dispatcher claims rows with FOR UPDATE SKIP LOCKED, setting
-- lease_until and claim; when the lease passes without an outcome (its instance died), another may claim it.
CREATE TABLE webhook_deliveries (
    seq             bigserial PRIMARY KEY,
    webhook_id      uuid      NOT NULL,
    event_id        uuid      NOT NULL, -- webhook-id of the delivery, the same on every attempt
    session_id      uuid      NOT NULL,
    kind            text      NOT NULL, -- session.created, message.created, ...
    body            text      NOT NULL, -- the JSON POSTed, made once
    created_at      bigint    NOT NULL, -- when the event was committed (epoch ms)
    state           smallint  NOT NULL DEFAULT 0, -- 0 pending, 2 failed (delivered rows are deleted)
    attempts        integer   NOT NULL DEFAULT 0,
    next_attempt_at bigint    NOT NULL,
    lease_until     bigint,
    claim           uuid,
    last_error      text
);
-- The pending rows of each (webhook, session) queue in order: finding its head, and what is before a row.
CREATE INDEX webhook_deliveries_queue ON webhook_deliveries (webhook_id, session_id, seq) WHERE state = 0;
-- Failed rows, by age, for their purge.
CREATE INDEX webhook_deliveries_failed ON webhook_deliveries (created_at) WHERE state = 2;
