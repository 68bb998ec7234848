//! `SessionCache`: the SQLite store's recently read and written sessions, in memory, so that the hot lookups
//! (`getSession`, and the read before every heartbeat and message) skip SQLite.
//!
//! Why: profiles of `getSession` and of heartbeats under load showed the session's SQLite read as the largest
//! share of a request after the HTTP stack itself (see BENCHMARKS.md), and a heartbeat's read could never reuse
//! a snapshot, since every heartbeat commits.
//!
//! Never stale after an answer. The writer puts the session each committed write leaves behind (or forgets the
//! sessions it deleted) after the commit and before it answers anyone, so a lookup that follows an answer sees
//! that write. A reader that missed offers the row it read, tagged with the writer's commit count read before
//! its snapshot began (`FastReads::commits`, counted twice per commit): the offer is dropped when a commit was
//! under way then (an odd count), and undone when the count has moved since, because that commit's put or forget
//! may have come before the offer. Both sides take the same shard lock, so either the writer's change comes
//! after the offer (and wins), or the reader sees the count moved (and undoes its offer).
//!
//! One server process serves a SQLite file (several instances share PostgreSQL); a change made to the file by
//! another process is seen once the entry is `MAX_AGE` old, as with the readers' snapshots.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use quick_cache::sync::Cache;
use uuid::Uuid;

use super::writes::{Applied, Write};
use crate::domain::Session;
use crate::store::{from_ms, to_ms};

/// Sessions kept; the least useful are evicted beyond it (quick_cache's S3-FIFO).
const CAPACITY: usize = 50_000;
/// Oldest entry served (see the module comment).
const MAX_AGE: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct Entry {
    session: Arc<Session>,
    at: Instant,
}

pub struct SessionCache {
    entries: Cache<Uuid, Entry>,
}

impl Default for SessionCache {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl SessionCache {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Cache::new(capacity),
        }
    }

    /// The session, if it is cached and young enough.
    pub fn get(&self, id: &Uuid) -> Option<Session> {
        let entry = self.entries.get(id)?;
        (entry.at.elapsed() <= MAX_AGE).then(|| Session::clone(&entry.session))
    }

    /// A reader's row, read in a snapshot that began at commit count `seen`; `commits` reads the count now.
    pub fn offer(&self, session: &Session, seen: u64, commits: impl Fn() -> u64) {
        if seen % 2 == 1 {
            return;
        }
        let session = Arc::new(session.clone());
        let id = session.id;
        self.entries.insert(
            id,
            Entry {
                session: session.clone(),
                at: Instant::now(),
            },
        );
        if commits() != seen {
            // Only this offer: a put the writer made since is newer than it.
            self.entries
                .remove_if(&id, |entry| Arc::ptr_eq(&entry.session, &session));
        }
    }

    /// What a committed write leaves behind, for the writer (after the commit, before it answers).
    pub fn committed(&self, write: &Write, applied: &Applied) {
        if applied.rows == 0 {
            return;
        }
        match write {
            Write::InsertSession(session)
            | Write::UpdateSession(session, ..)
            | Write::Heartbeat(session, ..)
            | Write::RecordMessage(session, ..) => self.put(stored(session)),
            Write::DeleteSession(id, _) => {
                self.entries.remove(id);
            }
            Write::DeleteAgent(agent, _) => {
                self.entries.retain(|_, e| e.session.agent_id != *agent)
            }
            Write::Purge { cutoff, .. } => self
                .entries
                .retain(|_, e| to_ms(e.session.expires_at) > *cutoff),
            _ => {}
        }
    }

    /// Forgets everything: after a batch whose outcome is unknown (a panic in the writer's own steps).
    pub fn clear(&self) {
        self.entries.clear();
    }

    fn put(&self, session: Session) {
        self.entries.insert(
            session.id,
            Entry {
                session: Arc::new(session),
                at: Instant::now(),
            },
        );
    }
}

/// The session as a read of its row gives it back: times are stored in whole milliseconds.
fn stored(session: &Session) -> Session {
    let ms = |t: DateTime<Utc>| from_ms(to_ms(t));
    Session {
        created_at: ms(session.created_at),
        last_activity: ms(session.last_activity),
        last_renewal: ms(session.last_renewal),
        expires_at: ms(session.expires_at),
        ..session.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TimeoutConfig;

    fn session() -> Session {
        let config = TimeoutConfig {
            timeout_minutes: 30.0,
            auto_renew: true,
            max_duration_minutes: 60.0,
            warning_threshold_minutes: 5.0,
        };
        Session::new(
            Uuid::new_v4(),
            Uuid::new_v4(),
            Default::default(),
            config,
            chrono::DateTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn a_readers_offer_is_kept_only_when_no_commit_came_between() {
        let cache = SessionCache::default();
        let s = session();
        cache.offer(&s, 4, || 4);
        assert_eq!(cache.get(&s.id), Some(s.clone()), "no commit since: kept");

        let s = session();
        cache.offer(&s, 5, || 5);
        assert_eq!(cache.get(&s.id), None, "read while a commit was under way");

        let s = session();
        cache.offer(&s, 4, || 6);
        assert_eq!(cache.get(&s.id), None, "a commit came between: undone");
    }

    #[test]
    fn a_writers_put_made_during_an_offer_survives_its_undoing() {
        let cache = SessionCache::default();
        let old = session();
        let mut new = old.clone();
        new.version += 1;
        // The writer commits and puts its session while the reader's offer is being made.
        cache.offer(&old, 4, || {
            cache.put(new.clone());
            6
        });
        assert_eq!(cache.get(&old.id), Some(new));
    }
}
