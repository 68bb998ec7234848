-- Agents and sessions. Times are epoch milliseconds (UTC); ids are 16-byte UUID blobs.
CREATE TABLE agents (
    id               BLOB    PRIMARY KEY NOT NULL,
    name             TEXT    NOT NULL,
    backend          TEXT    NOT NULL, -- JSON, tagged by "type"
    session_defaults TEXT    NOT NULL, -- JSON, a partial timeout config
    created_at       INTEGER NOT NULL
);

CREATE TABLE sessions (
    id                        BLOB    PRIMARY KEY NOT NULL,
    channel_id                BLOB    NOT NULL,
    agent_id                  BLOB    NOT NULL,
    user_id                   BLOB    NOT NULL,
    created_at                INTEGER NOT NULL,
    last_activity             INTEGER NOT NULL,
    last_renewal              INTEGER NOT NULL,
    expires_at                INTEGER NOT NULL,
    timeout_minutes           REAL    NOT NULL,
    auto_renew                INTEGER NOT NULL,
    max_duration_minutes      REAL    NOT NULL,
    warning_threshold_minutes REAL    NOT NULL,
    metadata                  TEXT    NOT NULL, -- JSON object
    renewal_count             INTEGER NOT NULL,
    version                   INTEGER NOT NULL
);

-- The sweeper and the active/expired counts range over expiry; list filters look up by agent or user.
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
CREATE INDEX sessions_by_agent ON sessions (agent_id, created_at);
CREATE INDEX sessions_by_user ON sessions (user_id, created_at);
