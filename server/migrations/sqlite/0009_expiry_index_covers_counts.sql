-- The expiry index holds warn_at too, so that counting sessions by expiry and warning (the health route's
-- counts) reads the index alone instead of every session's row.
DROP INDEX sessions_by_expiry;
CREATE INDEX sessions_by_expiry ON sessions (expires_at, warn_at);
