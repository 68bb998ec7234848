//! `RowCache`: the SQLite store's recently read and written sessions and agents, in memory, so that the hot
//! lookups (`getSession`; the read before every heartbeat, message and create) skip SQLite.
//!
//! Why: profiles of `getSession` and of heartbeats under load showed the session's SQLite read as the largest
//! share of a request after the HTTP stack itself, and the agent's read as a tenth of a create's (see
//! BENCHMARKS.md); a heartbeat's read could never reuse a snapshot, since every heartbeat commits.
//!
//! Never stale after an answer. The writer puts the row each committed write leaves behind (or forgets the rows
//! it deleted) after the commit and before it answers anyone, so a lookup that follows an answer sees that
//! write. A reader that missed offers the row it read, tagged with the writer's commit count read before its
//! snapshot began (`FastReads::commits`, counted twice per commit): the offer is dropped when a commit was under
//! way then (an odd count), and undone when the count has moved since, because that commit's put or forget may
//! have come before the offer. Both sides take the same shard lock, so either the writer's change comes after
//! the offer (and wins), or the reader sees the count moved (and undoes its offer).
//!
//! One server process serves a SQLite file (several instances share PostgreSQL); a change made to the file by
//! another process (an operator's `sqlite3`, say) reaches the lookups once the entry is `MAX_AGE` old. Not
//! sooner: an entry past it is read again, so a short age turned many lookups of a busy store into misses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use quick_cache::{UnitWeighter, Weighter};
use uuid::Uuid;

use super::history::History;
use super::reads::FastReads;
use super::writes::{Applied, Write};
use crate::domain::{Agent, Session};
use crate::store::{as_stored, to_ms, StoreError};

/// Sessions kept; the least useful are evicted beyond it (quick_cache's S3-FIFO). Bounded by the memory target
/// at a million stored sessions (see BENCHMARKS.md).
const SESSIONS: usize = 20_000;
/// Agents kept.
const AGENTS: usize = 1_000;
/// Bytes of message histories kept, roughly (see `history.rs`).
const HISTORY_BYTES: u64 = 32 << 20;
/// Oldest entry served (see the module comment).
const MAX_AGE: Duration = Duration::from_secs(60);

/// The pinned sessions, by id. foldhash (seeded per process): the writer inserts one per logged heartbeat, and
/// the standard hasher's SipHash was a share of its samples; the ids are the server's own, not a caller's.
type Pins = HashMap<Uuid, Arc<Session>, foldhash::fast::RandomState>;

struct Entry<T> {
    row: Arc<T>,
    at: Instant,
}

// By hand: a derived `Clone` would ask `T: Clone`, and a cached history is shared, never copied.
impl<T> Clone for Entry<T> {
    fn clone(&self) -> Self {
        Self {
            row: self.row.clone(),
            at: self.at,
        }
    }
}

/// A history's weight: roughly its bytes (see `history.rs`).
#[derive(Clone)]
struct HistoryBytes;

impl Weighter<Uuid, Entry<History>> for HistoryBytes {
    fn weight(&self, _: &Uuid, entry: &Entry<History>) -> u64 {
        entry.row.bytes()
    }
}

/// One table's cached rows, by id, bounded by `W`'s weights (one per row by default).
struct Rows<T, W = UnitWeighter> {
    entries: Cache<Uuid, Entry<T>, W>,
}

impl<T: Clone> Rows<T> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: Cache::new(capacity),
        }
    }

    #[cfg(test)]
    fn get(&self, id: &Uuid) -> Option<T> {
        self.get_shared(id).map(|row| T::clone(&row))
    }

    /// The row from the cache, else from `read` (a lookup on `reads`' connections), which then offers it.
    fn get_or_read(
        &self,
        id: Uuid,
        reads: &FastReads,
        read: impl FnOnce() -> Result<Option<T>, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        Ok(self
            .shared_or_read(id, reads, read)?
            .map(|row| T::clone(&row)))
    }
}

impl<T, W: Weighter<Uuid, Entry<T>> + Clone> Rows<T, W> {
    fn get_shared(&self, id: &Uuid) -> Option<Arc<T>> {
        let entry = self.entries.get(id)?;
        (entry.at.elapsed() <= MAX_AGE).then_some(entry.row)
    }

    /// `get_or_read`, sharing the cached row rather than copying it.
    fn shared_or_read(
        &self,
        id: Uuid,
        reads: &FastReads,
        read: impl FnOnce() -> Result<Option<T>, StoreError>,
    ) -> Result<Option<Arc<T>>, StoreError> {
        if let Some(row) = self.get_shared(&id) {
            return Ok(Some(row));
        }
        // Read before the snapshot begins: the snapshot then holds at least the commits counted here.
        let seen = reads.commits();
        let found = read()?.map(Arc::new);
        if let Some(row) = &found {
            self.offer(id, row.clone(), seen, || reads.commits());
        }
        Ok(found)
    }

    /// A reader's row (see the module comment).
    fn offer(&self, id: Uuid, row: Arc<T>, seen: u64, commits: impl Fn() -> u64) {
        if seen % 2 == 1 {
            return;
        }
        self.entries.insert(
            id,
            Entry {
                row: row.clone(),
                at: Instant::now(),
            },
        );
        if commits() != seen {
            // Only this offer: a put the writer made since is newer than it.
            self.entries
                .remove_if(&id, |entry| Arc::ptr_eq(&entry.row, &row));
        }
    }

    fn put(&self, id: Uuid, row: Arc<T>) {
        self.entries.insert(
            id,
            Entry {
                row,
                at: Instant::now(),
            },
        );
    }

    fn forget(&self, id: &Uuid) {
        self.entries.remove(id);
    }

    fn forget_where(&self, drop: impl Fn(&T) -> bool) {
        self.entries.retain(|_, e| !drop(&e.row));
    }
}

pub struct RowCache {
    sessions: Rows<Session>,
    agents: Rows<Agent>,
    /// Sessions' message histories (see `history.rs`).
    histories: Rows<History, HistoryBytes>,
    /// The sessions whose latest heartbeat is in the heartbeat log, not yet in their row (`activity.rs`): never
    /// evicted, so that a lookup that misses the cache finds them before it reads a row that lags behind.
    pinned: Mutex<Pins>,
    /// `pinned`'s length, read without its lock.
    pinned_len: AtomicUsize,
}

impl Default for RowCache {
    fn default() -> Self {
        Self {
            sessions: Rows::new(SESSIONS),
            agents: Rows::new(AGENTS),
            histories: Rows {
                entries: Cache::with_weighter(1024, HISTORY_BYTES, HistoryBytes),
            },
            pinned: Mutex::default(),
            pinned_len: AtomicUsize::new(0),
        }
    }
}

impl RowCache {
    /// The session, if it is cached and young enough (for tests: the store reads through `session_or_read`).
    #[cfg(test)]
    pub fn session(&self, id: &Uuid) -> Option<Session> {
        self.sessions.get(id)
    }

    /// The session from the cache, else pinned, else from `read` on `reads`' connections (see
    /// `Rows::get_or_read`). The pins are looked at after the commit count is read and before the row is: a
    /// fold unpins only after its commit is counted, so a lookup that no longer finds a pin reads the folded row.
    pub fn session_or_read(
        &self,
        id: Uuid,
        reads: &FastReads,
        read: impl FnOnce() -> Result<Option<Session>, StoreError>,
    ) -> Result<Option<Session>, StoreError> {
        self.sessions
            .get_or_read(id, reads, || match self.pinned_session(&id) {
                Some(session) => Ok(Some(session)),
                None => read(),
            })
    }

    fn pinned_session(&self, id: &Uuid) -> Option<Session> {
        if self.pinned_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let pinned = self.pinned.lock().unwrap_or_else(|e| e.into_inner());
        pinned.get(id).map(|s| Session::clone(s))
    }

    /// How many sessions are pinned (whether the heartbeat log holds anything).
    pub fn pinned(&self) -> usize {
        self.pinned_len.load(Ordering::Acquire)
    }

    /// Unpins these sessions, for the writer once a fold step that wrote their rows is committed and counted.
    pub fn unpin(&self, ids: &[Uuid]) {
        self.change_pins(|pinned| {
            for id in ids {
                pinned.remove(id);
            }
        });
    }

    /// Unpins every session, for the writer once a fold of the whole log is committed and counted.
    pub fn unpin_all(&self) {
        self.change_pins(HashMap::clear);
    }

    /// Changes the pinned sessions under their lock, keeping `pinned_len` in step.
    fn change_pins(&self, change: impl FnOnce(&mut Pins)) {
        let mut pinned = self.pinned.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut pinned);
        self.pinned_len.store(pinned.len(), Ordering::Release);
    }

    /// The session's message history from the cache, else from `read` (as `session_or_read`).
    pub fn history_or_read(
        &self,
        session_id: Uuid,
        reads: &FastReads,
        read: impl FnOnce() -> Result<History, StoreError>,
    ) -> Result<Arc<History>, StoreError> {
        let found = self
            .histories
            .shared_or_read(session_id, reads, || read().map(Some))?;
        Ok(found.unwrap_or_else(|| Arc::new(History::TooLong)))
    }

    /// The agent, if it is cached and young enough (for tests, as `session`).
    #[cfg(test)]
    pub fn agent(&self, id: &Uuid) -> Option<Agent> {
        self.agents.get(id)
    }

    /// The agent from the cache, else from `read` (as `session_or_read`).
    pub fn agent_or_read(
        &self,
        id: Uuid,
        reads: &FastReads,
        read: impl FnOnce() -> Result<Option<Agent>, StoreError>,
    ) -> Result<Option<Agent>, StoreError> {
        self.agents.get_or_read(id, reads, read)
    }

    /// What a committed write leaves behind, for the writer (after the commit, before it answers): the write
    /// is done with, so its session moves into the cache. A heartbeat appended to the heartbeat log also pins
    /// its session (see `activity.rs`).
    pub fn committed(&self, write: Write, applied: &Applied) {
        if applied.rows == 0 {
            return;
        }
        let message = matches!(write, Write::RecordMessage(..));
        match write {
            Write::InsertSession(session)
            | Write::UpdateSession(session, ..)
            | Write::Heartbeat(session, ..)
            | Write::RecordMessage(session, ..) => {
                if message {
                    self.histories.forget(&session.id);
                }
                let row = Arc::new(stored(*session));
                if applied.logged {
                    self.change_pins(|pinned| {
                        pinned.insert(row.id, row.clone());
                    });
                }
                self.sessions.put(row.id, row);
            }
            Write::InsertReply(reply, _) | Write::FinishReply(_, Some(reply), _) => {
                self.histories.forget(&reply.session_id)
            }
            Write::DeleteSession(id, _) => {
                self.sessions.forget(&id);
                self.histories.forget(&id);
            }
            Write::InsertAgent(agent) => self.agents.forget(&agent.id),
            Write::DeleteAgent(agent, _) => {
                self.agents.forget(&agent);
                self.sessions.forget_where(|s| s.agent_id == agent);
                self.histories.entries.clear();
            }
            Write::Purge { cutoff, .. } => {
                self.sessions
                    .forget_where(|s| to_ms(s.expires_at) <= cutoff);
                self.histories.entries.clear();
            }
            _ => {}
        }
    }

    /// Forgets everything but the pins: after a batch whose outcome is unknown (a panic in the writer's own
    /// steps). The pins go only with a fold (`unpin_all`).
    pub fn clear(&self) {
        self.sessions.entries.clear();
        self.agents.entries.clear();
        self.histories.entries.clear();
    }
}

/// The session as a read of its row gives it back: times are stored in whole milliseconds.
fn stored(mut session: Session) -> Session {
    session.created_at = as_stored(session.created_at);
    session.last_activity = as_stored(session.last_activity);
    session.last_renewal = as_stored(session.last_renewal);
    session.expires_at = as_stored(session.expires_at);
    session
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::half_hour;
    use super::*;

    fn session() -> Session {
        let config = half_hour();
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
        let cache = RowCache::default();
        let s = session();
        cache.sessions.offer(s.id, Arc::new(s.clone()), 4, || 4);
        assert_eq!(
            cache.session(&s.id),
            Some(s.clone()),
            "no commit since: kept"
        );

        let s = session();
        cache.sessions.offer(s.id, Arc::new(s.clone()), 5, || 5);
        assert_eq!(
            cache.session(&s.id),
            None,
            "read while a commit was under way"
        );

        let s = session();
        cache.sessions.offer(s.id, Arc::new(s.clone()), 4, || 6);
        assert_eq!(cache.session(&s.id), None, "a commit came between: undone");
    }

    #[test]
    fn a_writers_put_made_during_an_offer_survives_its_undoing() {
        let cache = RowCache::default();
        let old = session();
        let mut new = old.clone();
        new.version += 1;
        // The writer commits and puts its session while the reader's offer is being made.
        cache.sessions.offer(old.id, Arc::new(old.clone()), 4, || {
            cache.sessions.put(new.id, Arc::new(new.clone()));
            6
        });
        assert_eq!(cache.session(&old.id), Some(new));
    }
}
