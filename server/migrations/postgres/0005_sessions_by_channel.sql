-- Socket.IO clients name a session by its channel id (they join the room of that channel).
CREATE INDEX IF NOT EXISTS sessions_by_channel ON sessions (channel_id);
