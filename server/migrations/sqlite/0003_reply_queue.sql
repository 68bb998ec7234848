-- The reply queue lives in the messages table, so that any server instance can answer a session's messages in
-- order. reply_state: 0 = no reply expected (agent replies), 1 = pending, 2 = in progress, 3 = answered,
-- 4 = failed. claimed_at: when a worker took it (epoch ms), so that a claim of a crashed worker can expire.
ALTER TABLE messages ADD COLUMN in_reply_to BLOB;
ALTER TABLE messages ADD COLUMN reply_state INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN claimed_at INTEGER;
-- Only the few messages still waiting for a reply are indexed.
CREATE INDEX messages_awaiting_reply ON messages (session_id, seq) WHERE reply_state IN (1, 2);
