-- Heartbeats not yet folded into their session's row (store/sqlite/activity.rs): each one appended here, with
-- the values of the columns a heartbeat changes, instead of rewriting the row and moving it in two indexes. The
-- writer folds the log into the rows (and empties it) before any write that reads or changes session rows, at
-- least every second under load, and at start-up.
CREATE TABLE heartbeat_log (
    seq           INTEGER PRIMARY KEY,
    session_id    BLOB    NOT NULL,
    last_activity INTEGER NOT NULL,
    last_renewal  INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    renewal_count INTEGER NOT NULL,
    version       INTEGER NOT NULL,
    notice        INTEGER NOT NULL,
    warn_at       INTEGER NOT NULL
);
