-- The PostgreSQL schema: the same tables as the SQLite backend's migrations, in PostgreSQL types.
-- Times are epoch milliseconds (UTC) passed in by the server's clock: nothing here calls now().
-- JSON is kept as text, so that it reads back byte for byte as written (jsonb would reorder keys and
-- renormalise numbers, and the SQLite backend stores text too).
-- No foreign keys: deletes cascade explicitly, sessions row first (see postgres.rs), and a foreign key's share lock
-- on the parent row would conflict with the row locks that serialise each session's writes.

CREATE TABLE agents (
    id               uuid   PRIMARY KEY,
    name             text   NOT NULL,
    backend          text   NOT NULL, -- JSON, tagged by "type"
    session_defaults text   NOT NULL, -- JSON, a partial timeout config
    created_at       bigint NOT NULL
);

CREATE TABLE sessions (
    id                        uuid             PRIMARY KEY,
    channel_id                uuid             NOT NULL,
    agent_id                  uuid             NOT NULL,
    user_id                   uuid             NOT NULL,
    created_at                bigint           NOT NULL,
    last_activity             bigint           NOT NULL,
    last_renewal              bigint           NOT NULL,
    expires_at                bigint           NOT NULL,
    timeout_minutes           double precision NOT NULL,
    auto_renew                boolean          NOT NULL,
    max_duration_minutes      double precision NOT NULL,
    warning_threshold_minutes double precision NOT NULL,
    metadata                  text             NOT NULL, -- JSON object
    renewal_count             bigint           NOT NULL,
    version                   bigint           NOT NULL, -- optimistic concurrency: every update names the version it read
    notice                    smallint         NOT NULL DEFAULT 0, -- 0 nothing announced, 1 warned, 2 expiry announced
    warn_at                   bigint           NOT NULL  -- expires_at - warning threshold
);

-- The sweeper and the active/expired counts range over expiry; list filters look up by agent or user.
CREATE INDEX sessions_by_expiry ON sessions (expires_at, id);
CREATE INDEX sessions_by_agent ON sessions (agent_id, created_at);
CREATE INDEX sessions_by_user ON sessions (user_id, created_at);
-- Only sessions with an announcement still due are indexed, so the notifier's scan stays small.
CREATE INDEX sessions_notice_due ON sessions (warn_at) WHERE notice < 2;

CREATE TABLE messages (
    seq         bigserial PRIMARY KEY, -- insertion order: the stable tie-break of equal timestamps
    id          uuid      NOT NULL UNIQUE,
    session_id  uuid      NOT NULL,
    author_id   uuid      NOT NULL,
    is_agent    boolean   NOT NULL,
    content     text      NOT NULL,
    metadata    text      NOT NULL, -- JSON object
    attachments text,               -- JSON array, or NULL when the message had none
    created_at  bigint    NOT NULL,
    -- The reply queue, shared by all instances. in_reply_to: for agent replies, the user message answered.
    -- reply_state: 0 no reply expected (agent replies), 1 pending, 2 in progress, 3 answered, 4 failed.
    -- claimed_at: when a worker took it (epoch ms), so that the claim of a crashed worker can expire.
    in_reply_to uuid,
    reply_state smallint  NOT NULL DEFAULT 0,
    claimed_at  bigint
);
CREATE INDEX messages_by_session ON messages (session_id, created_at, seq);
-- Only the few messages still waiting for a reply are indexed.
CREATE INDEX messages_awaiting_reply ON messages (session_id, seq) WHERE reply_state IN (1, 2);

-- Events with ids (everything but reply chunks and deletions), so that a subscriber can resume after the last id
-- it saw, on any instance. Deleted with their session.
CREATE TABLE events (
    seq        bigserial PRIMARY KEY,
    session_id uuid      NOT NULL,
    kind       text      NOT NULL,
    data       text      NOT NULL, -- JSON
    created_at bigint    NOT NULL
);
CREATE INDEX events_by_session ON events (session_id, seq);
