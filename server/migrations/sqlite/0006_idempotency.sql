-- Idempotency keys: the first request sent under a key, per principal and operation, and once it succeeded its
-- response, which retries within 24 hours get again instead of a second session or message. Times are epoch
-- milliseconds (UTC). state: 1 = in flight (being served by `owner`), 2 = done (`status` and `response` set).
CREATE TABLE idempotency_keys (
    principal   TEXT    NOT NULL, -- who sent it: a digest of the API key, a token's session, or 'anonymous'
    scope       TEXT    NOT NULL, -- the operation and its session: createSession, sendMessage:<sessionId>
    key         TEXT    NOT NULL, -- as the client chose it
    fingerprint TEXT    NOT NULL, -- SHA-256 (hex) of the request's canonical body
    owner       BLOB    NOT NULL, -- the request holding the claim: only it completes or releases it
    state       INTEGER NOT NULL,
    status      INTEGER,
    response    TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (principal, scope, key)
);
-- The sweeper deletes expired keys in expiry order.
CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);
