-- Idempotency keys: the first request sent under a key, per principal and operation, and once it succeeded its
-- response, which retries within 24 hours get again instead of a second session or message, on any instance.
-- Times are epoch milliseconds (UTC). state: 1 = in flight (being served by `owner`), 2 = done (`status` and
-- `response` set). Claims are one INSERT ... ON CONFLICT on the primary key, so one instance wins a race.
CREATE TABLE idempotency_keys (
    principal   text     NOT NULL, -- who sent it: a digest of the API key, a token's session, or 'anonymous'
    scope       text     NOT NULL, -- the operation and its session: createSession, sendMessage:<sessionId>
    key         text     NOT NULL, -- as the client chose it
    fingerprint text     NOT NULL, -- SHA-256 (hex) of the request's canonical body
    owner       uuid     NOT NULL, -- the request holding the claim: only it completes or releases it
    state       smallint NOT NULL,
    status      smallint,
    response    text,
    created_at  bigint   NOT NULL,
    expires_at  bigint   NOT NULL,
    PRIMARY KEY (principal, scope, key)
);
-- The sweepers delete expired keys in expiry order.
CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);
