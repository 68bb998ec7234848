//! The SQLite store's writer: one OS thread owning the only write connection, applying every write waiting in
//! its queue in one transaction and committing once (group commit), then announcing the batch's events in
//! commit order and answering each caller. A caller is answered only after the commit containing its write
//! has reached the disk (`synchronous=FULL`), so nothing acknowledged is lost on a crash, and concurrent writers
//! share one fsync.
//!
//! Why a thread with a synchronous connection: a batch is dozens of statements, and sqlx's SQLite driver runs
//! each statement on a worker thread of its own (two thread hand-offs per statement). Profiling heartbeats
//! under load showed the writer's channel hand-offs and the resulting task switches as the largest cost, far
//! above the fsync itself. Executed in place, a statement takes microseconds.
//!
//! When the disk is full or the file stops taking writes, the batch fails whole (nothing of it stays behind),
//! its callers get `StoreError::Unavailable` (503), and the outage is logged once (`OutageLog`) until a commit
//! succeeds again; the writer itself goes on and recovers with the disk.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::sqlite_reads::{message, FastReads};
use super::{to_ms, EventBus, StoreError};
use crate::domain::{Agent, Message, Session, SessionEvent};
use crate::outage::OutageLog;

/// Most writes committed together; bounds the time one commit holds the write lock.
const MAX_BATCH: usize = 512;
/// Writes waiting for the writer; callers wait for room beyond this (backpressure).
const QUEUE_DEPTH: usize = 4096;

/// One write, as data, so that the writer can apply many of them in one transaction.
pub(super) enum Write {
    InsertAgent(Agent),
    /// Deletes an agent without active sessions (at the given epoch ms) with its sessions.
    DeleteAgent(Uuid, i64),
    InsertSession(Box<Session>),
    UpdateSession(Box<Session>, i64, Vec<SessionEvent>),
    DeleteSession(Uuid, Vec<SessionEvent>),
    Purge {
        cutoff: i64,
        limit: u32,
    },
    RecordMessage(Box<Session>, i64, Box<Message>, Vec<SessionEvent>),
    InsertReply(Box<Message>, Vec<SessionEvent>),
    ClaimReply {
        session_id: Uuid,
        now: i64,
        stale_before: i64,
    },
    FinishReply(Uuid, Option<Box<Message>>, Vec<SessionEvent>),
    /// Stores a setting unless it already has a value.
    InsertSetting {
        name: String,
        value: String,
    },
    /// Changes one row, to learn whether a commit reaches the disk now (the health check, after failures).
    Probe,
    /// A write that panics halfway (after a statement), for the test that the writer survives it.
    #[cfg(test)]
    Panic,
}

/// `messages.reply_state` values.
mod reply_state {
    pub const NONE: i64 = 0;
    pub const PENDING: i64 = 1;
    pub const IN_PROGRESS: i64 = 2;
    pub const ANSWERED: i64 = 3;
    pub const FAILED: i64 = 4;
}

/// What a write did: rows affected, the seq of an inserted message, a claimed message, and the events to
/// announce once the transaction has committed (persisted ones carrying their new seq).
#[derive(Default)]
pub(super) struct Applied {
    pub rows: u64,
    pub seq: Option<i64>,
    pub message: Option<Message>,
    publish: Vec<SessionEvent>,
}

// A job is moved once, into the queue; boxing the write would only add an allocation per write.
#[allow(clippy::large_enum_variant)]
pub(super) enum Job {
    Write {
        write: Write,
        done: oneshot::Sender<Result<Applied, StoreError>>,
    },
    /// Commit what is queued, then stop.
    Stop(oneshot::Sender<()>),
}

fn failed(e: rusqlite::Error) -> StoreError {
    super::sqlite::store_error(e)
}

/// Opens the write connection and starts the writer thread; returns the queue to it. The writer counts its
/// commits with `reads.count_commit`, which is how reads know when their snapshot is out of date.
///
/// `outage` hears of every commit, failed or not, and of checkpoints that fail for lack of space or access.
pub(super) fn spawn(
    path: &Path,
    bus: Arc<EventBus>,
    reads: Arc<FastReads>,
    outage: Arc<OutageLog>,
) -> anyhow::Result<mpsc::Sender<Job>> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // WAL is a property of the file (set at migration time too); FULL is per connection: each commit is
    // fsynced before it is acknowledged.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // 4 MiB of page cache (negative: KiB), deliberately small. A commit after a B-tree page split scans the
    // whole page cache: SQLite renumbers a page to the lock-byte page number while it sorts split pages, which
    // leaves the cache's highest key above the database's size, and the truncation at commit then visits every
    // cached page. With 32 MiB that scan was 14% of the writer's time under heartbeats; with 4 MiB it is under
    // 3%, and the pages it no longer holds come from the OS's file cache.
    conn.pragma_update(None, "cache_size", -4096)?;
    // Checkpoints run on their own thread (below), not inside some caller's commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // When the WAL restarts after a burst, it is truncated back to this size (bytes) instead of keeping its peak.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    conn.set_prepared_statement_cache_capacity(64);
    let checkpointer = Checkpointer::open(path, outage.clone())?;
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let (alive, writer_gone) = std::sync::mpsc::channel::<()>();
    let writer_reads = reads.clone();
    std::thread::Builder::new()
        .name("sqlite-writer".into())
        .spawn(move || {
            run(conn, rx, &bus, &writer_reads, &outage);
            drop(alive);
        })?;
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || checkpointer.run_until(&reads, writer_gone))?;
    Ok(tx)
}

/// The checkpoint thread's state: its own connection, the database file (to flush it, see `passive`), and how
/// far the WAL has been copied into the database file.
struct Checkpointer {
    conn: Connection,
    database_file: std::fs::File,
    copied: i64,
    /// The writer's: a checkpoint failing for lack of space or access is the same outage as a failing commit.
    outage: Arc<OutageLog>,
}

impl Checkpointer {
    fn open(path: &Path, outage: Arc<OutageLog>) -> anyhow::Result<Self> {
        let conn = Connection::open(path)?;
        // Spin, don't sleep, and give up soon: see `restart_wal`.
        conn.busy_handler(Some(spin_briefly))?;
        let database_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Self {
            conn,
            database_file,
            copied: 0,
            outage,
        })
    }

    /// Copies committed WAL pages into the database file every `INTERVAL`, without blocking the writer or
    /// readers (PASSIVE), and starts the WAL over every `RESTART_EVERY` of them (see `restart_wal`); stops when
    /// the writer stops.
    fn run_until(mut self, reads: &FastReads, writer_gone: std::sync::mpsc::Receiver<()>) {
        const INTERVAL: Duration = Duration::from_millis(200);
        const RESTART_EVERY: u32 = 5;
        let mut round = 0u32;
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            writer_gone.recv_timeout(INTERVAL)
        {
            round = round.wrapping_add(1);
            let result = if round.is_multiple_of(RESTART_EVERY) {
                self.restart_wal(reads)
            } else {
                self.passive()
            };
            // Every 200 ms: a full disk must not write a line each time. Only a commit ends the outage (a
            // checkpoint may succeed with nothing to copy while writes still fail).
            if let Err(e) = result {
                match failed(e) {
                    e @ StoreError::Unavailable(_) => {
                        self.outage.failed(&format_args!("WAL checkpoint: {e}"));
                    }
                    e => tracing::warn!(error = %e, "WAL checkpoint failed"),
                }
            }
        }
        // A last, full checkpoint so a cleanly stopped store leaves a small WAL.
        reads.release_snapshots_for(|| {
            let _ = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        });
    }

    /// Makes the next write start the WAL over from its beginning, so that the WAL stays small under continuous
    /// load. SQLite restarts the WAL only when a write begins with every frame copied into the database and no
    /// reader holding a snapshot in the WAL. Under continuous writes that moment never comes by itself (a commit
    /// always follows a PASSIVE checkpoint, and some reader always holds a recent snapshot): measured WALs grew
    /// past 1 GB. A RESTART checkpoint holds off the writer while it copies the few frames the last PASSIVE
    /// round left and waits for the readers still in the WAL, which `release_snapshots_for` makes a matter of
    /// microseconds.
    fn restart_wal(&mut self, reads: &FastReads) -> rusqlite::Result<()> {
        // Copy what is there without holding off anyone first, so that RESTART has little left to copy.
        self.passive()?;
        reads.release_snapshots_for(|| {
            self.conn
                .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
        })
    }

    /// Copies what it can of the WAL into the database file without blocking anyone, then flushes the database
    /// file to disk if that copied anything. Why the flush: SQLite syncs the database file only at the end of a
    /// checkpoint that copied the whole WAL, which under continuous writes is only the RESTART of
    /// `restart_wal`, and that one holds off the writer. It then had a second of copied pages to flush (14 to
    /// 17 ms measured with strace, 19 ms median for the RESTART), all of it a stall of every write. Flushed
    /// here, outside SQLite's locks, the RESTART's own sync has only its last few pages to write (6 ms median
    /// for the RESTART). An extra sync never weakens durability.
    fn passive(&mut self) -> rusqlite::Result<()> {
        let copied: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(2))?;
        if copied != self.copied {
            self.copied = copied;
            if let Err(e) = self.database_file.sync_data() {
                self.outage.failed(&format_args!(
                    "syncing the database file after a checkpoint: {e}"
                ));
            }
        }
        Ok(())
    }
}

/// The checkpoint connection's busy handler: retry at once (yielding the CPU) rather than sleep, and give up
/// after a few milliseconds. SQLite's own handler sleeps 1, 2, 5... up to 100 ms between tries; a RESTART
/// checkpoint that waits for the writer lock that way rarely finds the writer between two batches, and once
/// it holds that lock, each sleep while a reader finishes stalls every write (p99 went to hundreds of ms).
/// Giving up is harmless: the next round tries again.
fn spin_briefly(attempts: i32) -> bool {
    const MAX_ATTEMPTS: i32 = 20_000;
    std::thread::yield_now();
    attempts < MAX_ATTEMPTS
}

fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    bus: &EventBus,
    reads: &FastReads,
    outage: &OutageLog,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut stopped = None;
    while stopped.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Write { write, done } => batch.push((write, done)),
                Job::Stop(ack) => {
                    // Refuse new writes, but commit every write already accepted.
                    rx.close();
                    stopped = Some(ack);
                }
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        commit_and_answer_safely(&mut conn, &mut batch, bus, reads, outage);
    }
    while let Ok(job) = rx.try_recv() {
        if let Job::Write { write, done } = job {
            batch.push((write, done));
        }
    }
    commit_and_answer_safely(&mut conn, &mut batch, bus, reads, outage);
    drop(conn);
    if let Some(ack) = stopped {
        let _ = ack.send(());
    }
}

type Pending = (Write, oneshot::Sender<Result<Applied, StoreError>>);

/// `commit_and_answer`, surviving a panic anywhere in it (writes panicking are already caught one by one; this
/// is the last line of defence, for the batch's own steps). The batch's callers whose answer was not sent see
/// their write fail; a transaction left open is rolled back so that the next batch can begin.
fn commit_and_answer_safely(
    conn: &mut Connection,
    batch: &mut Vec<Pending>,
    bus: &EventBus,
    reads: &FastReads,
    outage: &OutageLog,
) {
    if caught(|| commit_and_answer(conn, batch, bus, reads, outage)).is_err() {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        batch.clear();
    }
}

/// Commits a batch, announces its events in commit order, then answers each caller.
fn commit_and_answer(
    conn: &mut Connection,
    batch: &mut Vec<Pending>,
    bus: &EventBus,
    reads: &FastReads,
    outage: &OutageLog,
) {
    if batch.is_empty() {
        return;
    }
    let outcomes = apply_batch(conn, batch, reads);
    // One line when writes start failing for lack of space or access, one when a commit succeeds again.
    match outcomes.iter().find_map(|o| {
        o.as_ref()
            .err()
            .filter(|e| matches!(e, StoreError::Unavailable(_)))
    }) {
        Some(e) => {
            outage.failed(e);
        }
        None if outcomes.iter().any(Result::is_ok) => {
            outage.recovered();
        }
        None => {}
    }
    for outcome in outcomes.iter().flatten() {
        for event in &outcome.publish {
            bus.publish(event);
        }
    }
    for ((_, done), outcome) in batch.drain(..).zip(outcomes) {
        let _ = done.send(outcome);
    }
}

/// Applies every write in one transaction. A write that fails alone reports its error and leaves nothing
/// behind (see `apply_atomically`); if the commit itself fails, every write in the batch reports it.
fn apply_batch(
    conn: &mut Connection,
    batch: &mut [Pending],
    reads: &FastReads,
) -> Vec<Result<Applied, StoreError>> {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let e = failed(e);
        return batch.iter().map(|_| Err(e.clone())).collect();
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for (write, _) in batch.iter_mut() {
        let outcome = apply_atomically(conn, write);
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back, as it may on a full disk or an I/O error: the writes
            // applied before this one are undone too, and the ones after it would each commit on their own
            // (while their callers are told the batch failed). So the whole batch fails, and nothing of it
            // stays.
            let e = outcome.err().unwrap_or_else(|| {
                StoreError::Unavailable("the transaction was rolled back".into())
            });
            return batch.iter().map(|_| Err(e.clone())).collect();
        }
        outcomes.push(outcome);
    }
    // Counted for the readers' snapshots (see `sqlite_reads.rs`), before anyone is answered.
    let committed = reads.count_commit(|| conn.execute_batch("COMMIT"));
    if let Err(e) = committed {
        let _ = conn.execute_batch("ROLLBACK");
        let e = failed(e);
        return batch.iter().map(|_| Err(e.clone())).collect();
    }
    outcomes
}

impl Write {
    /// Whether applying it takes more than one writing statement.
    fn is_compound(&self) -> bool {
        let persists = |events: &[SessionEvent]| events.iter().any(|e| !e.kind().is_transient());
        match self {
            Write::InsertAgent(_)
            | Write::InsertSession(_)
            | Write::ClaimReply { .. }
            | Write::InsertSetting { .. }
            | Write::Probe => false,
            Write::UpdateSession(_, _, events) | Write::InsertReply(_, events) => persists(events),
            Write::DeleteAgent(..)
            | Write::DeleteSession(..)
            | Write::Purge { .. }
            | Write::RecordMessage(..)
            | Write::FinishReply(..) => true,
            #[cfg(test)]
            Write::Panic => true,
        }
    }
}

/// Applies one write; a write of several statements runs inside a savepoint of its own. Why: when a statement
/// fails, SQLite undoes that statement only, so without the savepoint the write's earlier statements (a
/// claim marked answered, a session renewed) would commit with the rest of the batch while its caller is
/// told it failed.
///
/// A write that panics fails alone, like one that errs: the panic is caught here, so that one bad write can
/// never take the writer thread, and with it every later write of every client, down.
fn apply_atomically(conn: &Connection, write: &mut Write) -> Result<Applied, StoreError> {
    let compound = write.is_compound();
    if compound {
        conn.prepare_cached("SAVEPOINT write")
            .and_then(|mut s| s.execute([]))
            .map_err(failed)?;
    }
    let result = caught(|| {
        apply(conn, write).and_then(|applied| {
            if compound {
                conn.prepare_cached("RELEASE write")?.execute([])?;
            }
            Ok(applied)
        })
    })
    .and_then(|r| r.map_err(failed));
    if result.is_err() && compound {
        let _ = conn.execute_batch("ROLLBACK TO write; RELEASE write");
    }
    result
}

/// Runs `f`, turning a panic into a `StoreError` (logged) instead of unwinding through the writer thread.
fn caught<T>(f: impl FnOnce() -> T) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_string());
        tracing::error!(panic = %what, "a store write panicked; it failed alone and the writer goes on");
        StoreError::Backend(format!("the write panicked: {what}"))
    })
}

/// Stores the persistent events (assigning their seq) and returns all of them for announcement.
///
/// The seq is the row's INTEGER PRIMARY KEY, read back with `last_insert_rowid` rather than `RETURNING`: SQLite
/// buffers `RETURNING` rows in an ephemeral table, and opening and closing that table (a pager and page cache
/// of its own) on every insert was about 2% of the writer's time in a profile of heartbeats.
fn store_events(
    conn: &Connection,
    events: Vec<SessionEvent>,
) -> rusqlite::Result<Vec<SessionEvent>> {
    let mut out = Vec::with_capacity(events.len());
    for mut event in events {
        if !event.kind().is_transient() {
            conn.prepare_cached(
                "INSERT INTO events (session_id, kind, data, created_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                event.session_id,
                event.kind().as_str(),
                event.stored_data(),
                to_ms(event.at)
            ])?;
            event.seq = Some(conn.last_insert_rowid());
        }
        out.push(event);
    }
    Ok(out)
}

/// Inserts a message and returns its seq (see `store_events` on why not `RETURNING`); with `only_if_session`,
/// inserts nothing and returns None when the session no longer exists.
fn insert_message(
    conn: &Connection,
    m: &Message,
    state: i64,
    only_if_session: bool,
) -> rusqlite::Result<Option<i64>> {
    let sql = if only_if_session {
        "INSERT INTO messages (id, session_id, author_id, is_agent, content, metadata, attachments, created_at, \
         in_reply_to, reply_state) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 \
         WHERE EXISTS (SELECT 1 FROM sessions WHERE id = ?2)"
    } else {
        "INSERT INTO messages (id, session_id, author_id, is_agent, content, metadata, attachments, created_at, \
         in_reply_to, reply_state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    };
    let inserted = conn.prepare_cached(sql)?.execute(params![
        m.id,
        m.session_id,
        m.author_id,
        m.is_agent,
        m.content,
        serde_json::to_string(&m.metadata).unwrap_or_default(),
        m.attachments
            .as_ref()
            .map(|a| serde_json::to_string(a).unwrap_or_default()),
        to_ms(m.created_at),
        m.in_reply_to,
        state,
    ])?;
    Ok((inserted > 0).then(|| conn.last_insert_rowid()))
}

fn update_session_row(conn: &Connection, s: &Session, expected: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "UPDATE sessions SET last_activity = ?1, last_renewal = ?2, expires_at = ?3, timeout_minutes = ?4, \
         auto_renew = ?5, max_duration_minutes = ?6, warning_threshold_minutes = ?7, metadata = ?8, \
         renewal_count = ?9, version = ?10, notice = ?11, warn_at = ?12 WHERE id = ?13 AND version = ?14",
    )?
    .execute(params![
        to_ms(s.last_activity),
        to_ms(s.last_renewal),
        to_ms(s.expires_at),
        s.timeout.timeout_minutes,
        s.timeout.auto_renew,
        s.timeout.max_duration_minutes,
        s.timeout.warning_threshold_minutes,
        serde_json::to_string(&s.metadata).unwrap_or_default(),
        s.renewal_count,
        s.version,
        s.notice as i64,
        to_ms(s.warn_at()),
        s.id,
        expected,
    ])
}

fn rows(rows: usize) -> Applied {
    Applied {
        rows: rows as u64,
        ..Default::default()
    }
}

/// Applies one write. Its events are moved out (into `Applied::publish`), not copied: a write is applied once.
fn apply(conn: &Connection, write: &mut Write) -> rusqlite::Result<Applied> {
    Ok(match write {
        Write::InsertAgent(a) => rows(
            conn.prepare_cached(
                "INSERT INTO agents (id, name, backend, session_defaults, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                a.id,
                a.name,
                serde_json::to_string(&a.backend).unwrap_or_default(),
                serde_json::to_string(&a.session_defaults).unwrap_or_default(),
                to_ms(a.created_at),
            ])?,
        ),
        Write::DeleteAgent(id, active_at) => {
            let (id, active_at) = (*id, *active_at);
            let exists = conn
                .prepare_cached("SELECT 1 FROM agents WHERE id = ?1")?
                .query_row(params![id], |_| Ok(()))
                .optional()?
                .is_some();
            if !exists {
                return Ok(Applied::default());
            }
            let active: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM sessions WHERE agent_id = ?1 AND expires_at > ?2")?
                .query_row(params![id, active_at], |row| row.get(0))?;
            if active > 0 {
                // Reported through `seq`: how many active sessions kept the agent.
                return Ok(Applied { seq: Some(active), ..Default::default() });
            }
            for sql in [
                "DELETE FROM messages WHERE session_id IN (SELECT id FROM sessions WHERE agent_id = ?1)",
                "DELETE FROM events WHERE session_id IN (SELECT id FROM sessions WHERE agent_id = ?1)",
                "DELETE FROM sessions WHERE agent_id = ?1",
            ] {
                conn.prepare_cached(sql)?.execute(params![id])?;
            }
            rows(conn.prepare_cached("DELETE FROM agents WHERE id = ?1")?.execute(params![id])?)
        }
        Write::InsertSession(s) => rows(
            conn.prepare_cached(
                "INSERT INTO sessions (id, channel_id, agent_id, user_id, created_at, last_activity, last_renewal, \
                 expires_at, timeout_minutes, auto_renew, max_duration_minutes, warning_threshold_minutes, \
                 metadata, renewal_count, version, notice, warn_at) \
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17 \
                 WHERE EXISTS (SELECT 1 FROM agents WHERE id = ?3)",
            )?
            .execute(params![
                s.id,
                s.channel_id,
                s.agent_id,
                s.user_id,
                to_ms(s.created_at),
                to_ms(s.last_activity),
                to_ms(s.last_renewal),
                to_ms(s.expires_at),
                s.timeout.timeout_minutes,
                s.timeout.auto_renew,
                s.timeout.max_duration_minutes,
                s.timeout.warning_threshold_minutes,
                serde_json::to_string(&s.metadata).unwrap_or_default(),
                s.renewal_count,
                s.version,
                s.notice as i64,
                to_ms(s.warn_at()),
            ])?,
        ),
        Write::UpdateSession(s, expected, events) => {
            let n = update_session_row(conn, s, *expected)?;
            Applied {
                rows: n as u64,
                publish: if n > 0 { store_events(conn, std::mem::take(events))? } else { Vec::new() },
                ..Default::default()
            }
        }
        Write::DeleteSession(id, events) => {
            let id = *id;
            conn.prepare_cached("DELETE FROM messages WHERE session_id = ?1")?.execute(params![id])?;
            conn.prepare_cached("DELETE FROM events WHERE session_id = ?1")?.execute(params![id])?;
            let n = conn.prepare_cached("DELETE FROM sessions WHERE id = ?1")?.execute(params![id])?;
            Applied {
                rows: n as u64,
                publish: if n > 0 { std::mem::take(events) } else { Vec::new() },
                ..Default::default()
            }
        }
        Write::Purge { cutoff, limit } => {
            let (cutoff, limit) = (*cutoff, *limit);
            // The same deterministic subquery names the same sessions in all three statements. It follows the
            // expiry index exactly (its entries are ordered by expires_at, then rowid), so each batch reads only
            // its own rows; ordering by the id column instead sorted every expired session for every batch.
            let victims = "SELECT id FROM sessions WHERE expires_at <= ?1 ORDER BY expires_at, rowid LIMIT ?2";
            for table in ["messages", "events"] {
                conn.prepare_cached(&format!("DELETE FROM {table} WHERE session_id IN ({victims})"))?
                    .execute(params![cutoff, limit])?;
            }
            rows(
                conn.prepare_cached(&format!("DELETE FROM sessions WHERE id IN ({victims})"))?
                    .execute(params![cutoff, limit])?,
            )
        }
        Write::RecordMessage(s, expected, m, events) => {
            if update_session_row(conn, s, *expected)? == 0 {
                return Ok(Applied::default());
            }
            let seq = insert_message(conn, m, reply_state::PENDING, false)?;
            Applied {
                rows: 1,
                seq,
                publish: store_events(conn, std::mem::take(events))?,
                ..Default::default()
            }
        }
        Write::InsertReply(m, events) => match insert_message(conn, m, reply_state::NONE, true)? {
            None => Applied::default(),
            Some(seq) => Applied {
                rows: 1,
                seq: Some(seq),
                publish: store_events(conn, std::mem::take(events))?,
                ..Default::default()
            },
        },
        Write::ClaimReply {
            session_id,
            now,
            stale_before,
        } => {
            let (session_id, now, stale_before) = (*session_id, *now, *stale_before);
            // The writer applies one write at a time, so this check-then-claim cannot race.
            let busy: Option<i64> = conn
                .prepare_cached(
                    "SELECT seq FROM messages WHERE session_id = ?1 AND reply_state = ?2 AND claimed_at > ?3 LIMIT 1",
                )?
                .query_row(params![session_id, reply_state::IN_PROGRESS, stale_before], |row| row.get(0))
                .optional()?;
            if busy.is_some() {
                return Ok(Applied::default());
            }
            let claimed = conn
                .prepare_cached(&format!(
                    "UPDATE messages SET reply_state = ?2, claimed_at = ?3 WHERE seq = (SELECT seq FROM messages \
                     WHERE session_id = ?1 AND (reply_state = ?4 OR (reply_state = ?2 AND claimed_at <= ?5)) \
                     ORDER BY seq LIMIT 1) RETURNING {}",
                    super::sqlite::MESSAGE_COLUMNS
                ))?
                .query_row(
                    params![session_id, reply_state::IN_PROGRESS, now, reply_state::PENDING, stale_before],
                    message,
                )
                .optional()?;
            Applied {
                rows: u64::from(claimed.is_some()),
                message: claimed,
                ..Default::default()
            }
        }
        #[cfg(test)]
        Write::Panic => {
            conn.execute("INSERT INTO settings (name, value) VALUES ('half', 'done')", [])?;
            panic!("a write panicked halfway")
        }
        Write::Probe => rows(
            conn.prepare_cached(
                "INSERT INTO settings (name, value) VALUES ('write_probe', '0') \
                 ON CONFLICT (name) DO UPDATE SET value = CAST(settings.value AS INTEGER) + 1",
            )?
            .execute([])?,
        ),
        Write::InsertSetting { name, value } => rows(
            conn.prepare_cached("INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING")?
                .execute(params![name.as_str(), value.as_str()])?,
        ),
        Write::FinishReply(user_message_id, reply, events) => {
            let state = if reply.is_some() {
                reply_state::ANSWERED
            } else {
                reply_state::FAILED
            };
            let ours = conn
                .prepare_cached("UPDATE messages SET reply_state = ?2 WHERE id = ?1 AND reply_state = ?3")?
                .execute(params![*user_message_id, state, reply_state::IN_PROGRESS])?;
            if ours == 0 {
                return Ok(Applied::default());
            }
            if let Some(m) = reply {
                if insert_message(conn, m, reply_state::NONE, true)?.is_none() {
                    return Ok(Applied::default());
                }
            }
            Applied {
                rows: 1,
                publish: store_events(conn, std::mem::take(events))?,
                ..Default::default()
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(store: &Path, name: &str) -> Option<String> {
        Connection::open(store)
            .unwrap()
            .query_row("SELECT value FROM settings WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .unwrap()
    }

    async fn submit(queue: &mpsc::Sender<Job>, write: Write) -> Result<Applied, StoreError> {
        let (done, answer) = oneshot::channel();
        queue
            .send(Job::Write { write, done })
            .await
            .expect("writer alive");
        answer.await.expect("answered")
    }

    /// A panicking write fails alone and leaves nothing behind; the writer thread lives and commits the writes
    /// queued with it and after it.
    #[tokio::test]
    async fn a_panicking_write_fails_alone_and_the_writer_lives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let url = format!("sqlite:{}", path.display());
        let migrated = crate::store::SqliteStore::open(&url).await.unwrap();
        crate::store::SessionStore::close(&migrated).await;
        let queue = spawn(
            &path,
            Arc::new(EventBus::default()),
            Arc::new(FastReads::new(path.clone())),
            Arc::new(OutageLog::new("SQLite writes")),
        )
        .unwrap();
        let before = submit(
            &queue,
            Write::InsertSetting {
                name: "a".into(),
                value: "1".into(),
            },
        );
        let (before, panicked) = tokio::join!(before, submit(&queue, Write::Panic));
        assert!(before.is_ok());
        let err = panicked.err().expect("the panicking write fails");
        assert!(err.to_string().contains("panicked"), "{err}");
        submit(
            &queue,
            Write::InsertSetting {
                name: "b".into(),
                value: "2".into(),
            },
        )
        .await
        .expect("the writer lives");
        assert!(!queue.is_closed());
        assert_eq!(setting(&path, "a").as_deref(), Some("1"));
        assert_eq!(setting(&path, "b").as_deref(), Some("2"));
        assert_eq!(
            setting(&path, "half"),
            None,
            "the panicking write's first statement was undone"
        );
        let (ack, stopped) = oneshot::channel();
        queue.send(Job::Stop(ack)).await.unwrap();
        stopped.await.unwrap();
    }
}
