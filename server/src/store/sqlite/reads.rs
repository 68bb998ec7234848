//! `FastReads`: the SQLite store's reads (a session, an agent, a page of messages, counts), run synchronously
//! on the calling thread over a small pool of read-only connections.
//!
//! Why: sqlx's SQLite driver runs every statement on a worker thread of its own, so each query costs two
//! thread hand-offs, and profiles of `getSession` under load showed the kernel switching threads far above
//! SQLite itself. An indexed single-row read takes less than those hand-offs, so doing it in place is both
//! faster and lighter. WAL lets these readers run beside the writer without waiting for it.
//!
//! A pooled connection keeps its read transaction (its snapshot) open across lookups for as long as nothing has
//! been committed since it began, and at most `MAX_SNAPSHOT_AGE`. Why: beginning and ending a read transaction
//! takes file-lock system calls and SQLite's process-wide lock mutex, which profiling `getSession` showed as
//! most of the time of a lookup.
//! The writer counts twice per commit, once before its COMMIT and once after, before it answers anyone. A
//! snapshot is kept only when it began at an even count and the count has not moved since, so every kept
//! snapshot holds exactly the state of that count: reads never go stale after an answer, and two lookups in a
//! row never see a change and then its absence. One server process serves a SQLite file (several
//! instances share PostgreSQL instead); a commit by another process on the same file would be seen up to
//! `MAX_SNAPSHOT_AGE` late.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row};

use super::rows::store_error as failed;
use crate::store::StoreError;

/// Idle connections kept; more are opened under load and dropped when returned beyond this.
const KEEP_IDLE: usize = 8;
/// Longest a snapshot is reused.
const MAX_SNAPSHOT_AGE: Duration = Duration::from_millis(100);

/// A read connection and the snapshot it holds open, if any: the commit count read before it began, and when.
struct Reader {
    conn: Connection,
    snapshot: Option<(u64, Instant)>,
}

impl Reader {
    /// Whether the open snapshot, if any, may still be used: begun between two commits (an even count),
    /// nothing committed since, and young.
    fn is_current(&self, commits: u64) -> bool {
        match self.snapshot {
            Some((began_at, since)) => {
                began_at % 2 == 0 && began_at == commits && since.elapsed() <= MAX_SNAPSHOT_AGE
            }
            None => true,
        }
    }

    /// Ends the open read transaction, if any; a connection that cannot end it is not reused.
    fn end_snapshot(&mut self) -> rusqlite::Result<()> {
        if self.snapshot.take().is_some() {
            self.conn.prepare_cached("COMMIT")?.execute([])?;
        }
        Ok(())
    }
}

pub struct FastReads {
    path: PathBuf,
    idle: Mutex<Vec<Reader>>,
    /// Counted twice per commit, before and after it, by `count_commit` (see the module comment).
    commits: AtomicU64,
    /// Set while `release_snapshots_for` runs: no snapshot outlives its read.
    releasing: AtomicBool,
}

impl FastReads {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
            commits: AtomicU64::new(0),
            releasing: AtomicBool::new(false),
        }
    }

    fn connect(&self) -> rusqlite::Result<Connection> {
        // NO_MUTEX: a connection is used by one thread at a time (it is taken out of the pool while in use).
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // 4 MiB of page cache (negative: KiB), up from SQLite's 2: it holds a small store's sessions for random
        // lookups, and on a large one the interior pages of the sessions table and its indexes (what every lookup
        // walks), while a random lookup's leaf page is rarely read again before it is evicted, however large the
        // cache (the OS's page cache keeps those). Per connection, and about as many connections as threads reading
        // at once (the pool's LIFO order): larger caches cost the memory budget of a large store without making
        // its lookups faster (see BENCHMARKS.md).
        conn.pragma_update(None, "cache_size", -4096)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }

    fn with<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut reader = match pooled {
            Some(reader) => reader,
            None => Reader {
                conn: self.connect().map_err(failed)?,
                snapshot: None,
            },
        };
        let result = self.read_fresh(&mut reader, read);
        // A connection whose state is unknown after an error is dropped rather than pooled. One whose snapshot
        // is already out of date ends it now: an idle snapshot of old WAL frames would keep the writer from
        // restarting the WAL (see `checkpoint.rs`).
        let keep = !self.releasing.load(Ordering::Acquire)
            && reader.is_current(self.commits.load(Ordering::Acquire));
        let reusable = result.is_ok() && (keep || reader.end_snapshot().is_ok());
        if reusable {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < KEEP_IDLE {
                idle.push(reader);
            }
        }
        result.map_err(failed)
    }

    /// Runs `read` in a snapshot that includes every commit acknowledged so far.
    fn read_fresh<T>(
        &self,
        reader: &mut Reader,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        // Loaded before the snapshot begins: the snapshot then holds at least the commits counted here.
        let commits = self.commits.load(Ordering::Acquire);
        if !reader.is_current(commits) {
            reader.end_snapshot()?;
        }
        if reader.snapshot.is_none() {
            // Deferred: the snapshot is taken by the first read below.
            reader.conn.prepare_cached("BEGIN")?.execute([])?;
            reader.snapshot = Some((commits, Instant::now()));
        }
        read(&reader.conn)
    }

    /// The commit count now (see the module comment); a snapshot begun after this call holds every commit it
    /// counts.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Acquire)
    }

    /// Runs the writer's `commit`, counting once before it and once after (see the module comment): the writer
    /// calls this before it answers anyone, so a read that follows an answer never reuses an older snapshot.
    pub fn count_commit<T>(&self, commit: impl FnOnce() -> T) -> T {
        self.commits.fetch_add(1, Ordering::AcqRel);
        let out = commit();
        self.commits.fetch_add(1, Ordering::AcqRel);
        out
    }

    /// Ends the snapshots of idle connections that are out of date (a commit came after them). Why: a snapshot
    /// keeps a checkpoint from copying the WAL frames committed after it, and under writes with few reads an
    /// idle connection could keep one for seconds: each checkpoint then copied almost nothing, and the WAL
    /// restart (which ends every snapshot and holds off the writer while it copies the rest) had all of it to
    /// copy, stalling every write for tens of milliseconds (see `checkpoint.rs`).
    pub fn end_stale_snapshots(&self) {
        let commits = self.commits.load(Ordering::Acquire);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain_mut(|reader| reader.is_current(commits) || reader.end_snapshot().is_ok());
    }

    /// Runs `checkpoint` while no reader keeps a snapshot beyond the read it is doing: idle connections end
    /// theirs first, in-flight ones end theirs as they are returned, and new ones until `checkpoint` is done.
    /// A checkpoint that restarts or truncates the WAL waits for every reader of it, so a snapshot parked in
    /// the pool would stall it (and the writer behind it) indefinitely.
    pub fn release_snapshots_for<T>(&self, checkpoint: impl FnOnce() -> T) -> T {
        self.releasing.store(true, Ordering::Release);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain_mut(|reader| reader.end_snapshot().is_ok());
        drop(idle);
        let out = checkpoint();
        self.releasing.store(false, Ordering::Release);
        out
    }

    /// The row a query finds, if any, decoded by `decode`: the hot lookups (a session, an agent), whose SQL
    /// the caller builds once.
    pub fn one<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        decode: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        self.with(|conn| {
            conn.prepare_cached(sql)?
                .query_row(params, decode)
                .optional()
        })
    }

    /// Every row of a query, decoded by `decode`: the store's colder reads (listings, counts, replays).
    pub fn rows<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        decode: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        self.with(|conn| {
            conn.prepare_cached(sql)?
                .query_map(params, decode)?
                .collect()
        })
    }
}
