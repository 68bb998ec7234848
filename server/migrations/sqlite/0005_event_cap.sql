-- The highest event seq pruned from this session's log (0: none). Events are kept up to a number per session;
-- a subscriber resuming from an id below this one has missed events and is told so (a `replay-gap` event).
ALTER TABLE sessions ADD COLUMN events_pruned_through INTEGER NOT NULL DEFAULT 0;
