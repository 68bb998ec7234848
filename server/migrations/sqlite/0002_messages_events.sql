-- Message history, the persisted event log of each session, and the expiry-notice state of sessions.

CREATE TABLE messages (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT, -- insertion order: the stable tie-break of equal timestamps
    id          BLOB    NOT NULL UNIQUE,
    session_id  BLOB    NOT NULL,
    author_id   BLOB    NOT NULL,
    is_agent    INTEGER NOT NULL,
    content     TEXT    NOT NULL,
    metadata    TEXT    NOT NULL, -- JSON object
    attachments TEXT,             -- JSON array, or NULL when the message had none
    created_at  INTEGER NOT NULL
);
CREATE INDEX messages_by_session ON messages (session_id, created_at, seq);

-- Events with ids (everything but reply chunks and deletions), so that a subscriber can resume after the last
-- id it saw. Deleted with their session.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id BLOB    NOT NULL,
    kind       TEXT    NOT NULL,
    data       TEXT    NOT NULL, -- JSON
    created_at INTEGER NOT NULL
);
CREATE INDEX events_by_session ON events (session_id, seq);

-- 0 = nothing announced, 1 = warning sent, 2 = expiry announced. warn_at = expires_at - warning threshold.
ALTER TABLE sessions ADD COLUMN notice INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN warn_at INTEGER NOT NULL DEFAULT 0;
UPDATE sessions SET warn_at = expires_at - CAST(ROUND(warning_threshold_minutes * 60000) AS INTEGER);
-- Only sessions with an announcement still due are indexed, so the notifier's scan stays small however many
-- sessions are stored.
CREATE INDEX sessions_notice_due ON sessions (warn_at) WHERE notice < 2;
