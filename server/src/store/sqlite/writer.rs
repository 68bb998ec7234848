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
//! A batch of heartbeats only (`Write::is_lazy`) is committed with `synchronous=NORMAL`: in WAL mode its frames
//! reach the operating system's cache, not the disk, before the callers are answered, so a crash of this process
//! loses none of them; the next `FULL` commit's `fsync` (of the same WAL) or the next checkpoint takes them to
//! the disk. Any other write in the batch makes it `FULL`.
//!
//! Heartbeats are appended to the heartbeat log rather than rewriting their rows (`activity.rs`) in a batch
//! without writes that read or change session rows; before such a batch the writer folds the whole log into
//! the rows, once it is due (`Pending::due`) it folds it a step between each two batches, and it folds it
//! whole before it stops.
//!
//! When the disk is full or the file stops taking writes, the batch fails whole (nothing of it stays behind),
//! its callers get `StoreError::Unavailable` (503), and the outage is logged once (`OutageLog`) until a commit
//! succeeds again; the writer itself goes on and recovers with the disk.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, Notify};

use super::activity::{self, Pending};
use super::cache::RowCache;
use super::checkpoint::Checkpointer;
use super::reads::FastReads;
use super::rows::store_error as failed;
use super::webhooks;
use super::writes::{apply_atomically, caught, Applied, Write};
use crate::outage::OutageLog;
use crate::store::{EventBus, StoreError};

/// Most writes committed together; bounds the time one commit holds the write lock.
const MAX_BATCH: usize = 512;
/// Writes waiting for the writer; callers wait for room beyond this (backpressure).
const QUEUE_DEPTH: usize = 4096;

// A job is moved once, into the queue; boxing the write would only add an allocation per write.
#[allow(clippy::large_enum_variant)]
pub enum Job {
    Write {
        write: Write,
        done: oneshot::Sender<Result<Applied, StoreError>>,
    },
    /// Commit what is queued, then stop.
    Stop(oneshot::Sender<()>),
}

/// Opens the write connection and starts the writer thread; returns the queue to it. The writer counts its
/// commits with `reads.count_commit`, which is how reads know when their snapshot is out of date.
///
/// `cache` hears of what each commit changed (see `cache.rs`) before anyone is answered.
/// `outage` hears of every commit, failed or not, and of checkpoints that fail for lack of space or access;
/// `queued` is notified after every commit that queued webhook deliveries. Each session's event log keeps its
/// `events_per_session` newest events (0: all).
pub fn spawn(
    path: &Path,
    bus: Arc<EventBus>,
    queued: Arc<Notify>,
    reads: Arc<FastReads>,
    cache: Arc<RowCache>,
    outage: Arc<OutageLog>,
    events_per_session: u32,
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
    // cached page. With a larger cache that scan took a large share of the writer's time under heartbeats (see
    // BENCHMARKS.md); with a small one it is minor, and the pages it no longer holds come from the OS's file
    // cache.
    conn.pragma_update(None, "cache_size", -4096)?;
    // Checkpoints run on their own thread (`checkpoint.rs`), not inside some caller's commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // No truncation of the WAL when it starts over: SQLite does that in the first commit after the restart, and
    // freeing a busy second's WAL stalled that commit for tens of milliseconds. The checkpoint thread truncates it
    // once writes pause instead (`checkpoint.rs`).
    conn.pragma_update(None, "journal_size_limit", -1)?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.execute_batch("BEGIN IMMEDIATE")?;
    activity::fold_logged(&conn)?;
    conn.execute_batch("COMMIT")?;
    let checkpointer = Checkpointer::open(path, outage.clone())?;
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let (alive, writer_gone) = std::sync::mpsc::channel::<()>();
    let writer_reads = reads.clone();
    std::thread::Builder::new()
        .name("sqlite-writer".into())
        .spawn(move || {
            let after = AfterCommit {
                bus: &bus,
                queued: &queued,
                cache: &cache,
            };
            run(conn, rx, &after, &writer_reads, &outage, events_per_session);
            drop(alive);
        })?;
    checkpointer.spawn(reads, writer_gone)?;
    Ok(tx)
}

/// Who hears of a commit: the session cache, subscribers of its events, and the webhook dispatcher when it
/// queued deliveries.
struct AfterCommit<'a> {
    bus: &'a EventBus,
    queued: &'a Notify,
    cache: &'a RowCache,
}

fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    after: &AfterCommit<'_>,
    reads: &FastReads,
    outage: &OutageLog,
    keep: u32,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut log = Pending::default();
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
        commit_and_answer_safely(&mut conn, &mut batch, &mut log, after, reads, outage, keep);
        // A step of the fold after each batch, more while no write waits.
        while log.due() {
            if fold_step(&conn, &mut log, after, reads).is_err() || !rx.is_empty() {
                break;
            }
        }
    }
    while let Ok(job) = rx.try_recv() {
        if let Job::Write { write, done } = job {
            batch.push((write, done));
        }
    }
    commit_and_answer_safely(&mut conn, &mut batch, &mut log, after, reads, outage, keep);
    let _ = fold_log(&conn, &mut log, after, reads, false);
    drop(conn);
    if let Some(ack) = stopped {
        let _ = ack.send(());
    }
}

type Queued = (Write, oneshot::Sender<Result<Applied, StoreError>>);

/// `commit_and_answer`, surviving a panic anywhere in it (writes panicking are already caught one by one; this
/// is the last line of defence, for the batch's own steps). The batch's callers whose answer was not sent see
/// their write fail; a transaction left open is rolled back so that the next batch can begin.
fn commit_and_answer_safely(
    conn: &mut Connection,
    batch: &mut Vec<Queued>,
    log: &mut Pending,
    after: &AfterCommit<'_>,
    reads: &FastReads,
    outage: &OutageLog,
    keep: u32,
) {
    if caught(|| commit_and_answer(conn, batch, log, after, reads, outage, keep)).is_err() {
        // Whether the batch committed is unknown here: no cached session may outlive it, and the heartbeat log
        // is folded whole (whatever it holds), which also brings the pins back in line with it.
        after.cache.clear();
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        log.discard_staged();
        let _ = caught(|| fold_log(conn, log, after, reads, true));
        batch.clear();
    }
}

/// Takes a step of folding the heartbeat log (`Pending::fold_step`), then unpins the sessions it wrote.
fn fold_step(
    conn: &Connection,
    log: &mut Pending,
    after: &AfterCommit<'_>,
    reads: &FastReads,
) -> Result<(), StoreError> {
    let step = own_transaction(conn, reads, || log.fold_step(conn))?;
    log.stepped(&step);
    after.cache.unpin(step.ids());
    Ok(())
}

/// Folds the whole heartbeat log into the session rows, then unpins every session. `whole`: whatever the log
/// table holds, read back from it, rather than what the writer remembers having logged.
fn fold_log(
    conn: &Connection,
    log: &mut Pending,
    after: &AfterCommit<'_>,
    reads: &FastReads,
    whole: bool,
) -> Result<(), StoreError> {
    if !log.any() && !whole {
        return Ok(());
    }
    own_transaction(conn, reads, || {
        if whole {
            activity::fold_logged(conn)
        } else {
            log.fold(conn)
        }
    })?;
    log.folded();
    after.cache.unpin_all();
    Ok(())
}

/// Runs `work` in a transaction of its own, without `fsync` (it only moves what logged heartbeats already
/// made durable against a crash of the process), committed and counted for the readers; on failure, a panic
/// of `work` included (caught as a write's is), rolled back, so that whatever the caller keeps in memory
/// stays as it was and the writer goes on.
fn own_transaction<T>(
    conn: &Connection,
    reads: &FastReads,
    work: impl FnOnce() -> rusqlite::Result<T>,
) -> Result<T, StoreError> {
    set_sync(conn, true).map_err(failed)?;
    conn.execute_batch("BEGIN IMMEDIATE").map_err(failed)?;
    let done = caught(work).and_then(|worked| {
        worked
            .and_then(|value| {
                reads
                    .count_commit(|| conn.execute_batch("COMMIT"))
                    .map(|()| value)
            })
            .map_err(failed)
    });
    if done.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    done
}

/// Commits a batch, announces its events in commit order, then answers each caller. A batch with a write that
/// reads or changes session rows folds the heartbeat log first and applies its heartbeats to the rows; any
/// other batch appends its heartbeats to the log.
fn commit_and_answer(
    conn: &mut Connection,
    batch: &mut Vec<Queued>,
    log: &mut Pending,
    after: &AfterCommit<'_>,
    reads: &FastReads,
    outage: &OutageLog,
    keep: u32,
) {
    if batch.is_empty() {
        return;
    }
    let started = std::time::Instant::now();
    let lazy = batch.iter().all(|(write, _)| write.is_lazy());
    let needs_rows = batch.iter().any(|(write, _)| write.needs_session_rows());
    let ready = if needs_rows {
        fold_log(conn, log, after, reads, false)
    } else {
        Ok(())
    };
    let outcomes = match ready.and_then(|()| set_sync(conn, lazy).map_err(failed)) {
        Ok(()) => apply_batch(conn, batch, (!needs_rows).then_some(&mut *log), reads, keep),
        Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
    };
    if outcomes.iter().any(Result::is_ok) {
        log.commit_staged();
    } else {
        log.discard_staged();
    }
    crate::metrics::store_commit("sqlite", batch.len(), started.elapsed());
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
    // The writes are done with: their sessions move into the cache (and the logged heartbeats' into the pins).
    let mut answers = Vec::with_capacity(batch.len());
    for ((write, done), outcome) in batch.drain(..).zip(&outcomes) {
        if let Ok(applied) = outcome {
            after.cache.committed(write, applied);
        }
        answers.push(done);
    }
    for outcome in outcomes.iter().flatten() {
        for event in &outcome.publish {
            after.bus.publish(event);
        }
    }
    if outcomes.iter().flatten().any(|o| o.queued > 0) {
        after.queued.notify_one();
    }
    for (done, outcome) in answers.into_iter().zip(outcomes) {
        let _ = done.send(outcome);
    }
}

/// Sets the connection's `synchronous` for the next commit: NORMAL for a lazy batch, FULL otherwise (a no-op
/// when it already is).
fn set_sync(conn: &Connection, lazy: bool) -> rusqlite::Result<()> {
    thread_local! {
        static LAZY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if LAZY.get() == lazy {
        return Ok(());
    }
    conn.pragma_update(None, "synchronous", if lazy { "NORMAL" } else { "FULL" })?;
    LAZY.set(lazy);
    Ok(())
}

/// Applies every write in one transaction, heartbeats to the heartbeat `log` when given. A write that fails
/// alone reports its error and leaves nothing behind (see `apply_atomically`); if the commit itself fails,
/// every write in the batch reports it.
fn apply_batch(
    conn: &mut Connection,
    batch: &mut [Queued],
    mut log: Option<&mut Pending>,
    reads: &FastReads,
    keep: u32,
) -> Vec<Result<Applied, StoreError>> {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let e = failed(e);
        return batch.iter().map(|_| Err(e.clone())).collect();
    }
    webhooks::forget_any_webhook();
    let mut outcomes = Vec::with_capacity(batch.len());
    for (write, _) in batch.iter_mut() {
        let outcome = apply_atomically(conn, write, log.as_deref(), keep);
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
        let outcome = match (&mut log, &*write, outcome) {
            (Some(log), Write::Heartbeat(session, ..), Ok(applied)) if applied.logged => {
                log.stage(session).map(|()| applied).map_err(failed)
            }
            (_, _, outcome) => outcome,
        };
        outcomes.push(outcome);
    }
    // Counted for the readers' snapshots (see `reads.rs`), before anyone is answered.
    let committed = reads.count_commit(|| conn.execute_batch("COMMIT"));
    if let Err(e) = committed {
        let _ = conn.execute_batch("ROLLBACK");
        let e = failed(e);
        return batch.iter().map(|_| Err(e.clone())).collect();
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    use rusqlite::OptionalExtension;

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

    /// A heartbeat-only batch commits with synchronous=NORMAL (no fsync); any other batch with FULL.
    #[test]
    fn only_a_lazy_batch_skips_the_fsync() {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        let level = |conn: &Connection| -> i64 {
            conn.query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap()
        };
        set_sync(&conn, true).unwrap();
        assert_eq!(level(&conn), 1, "NORMAL");
        set_sync(&conn, true).unwrap();
        assert_eq!(level(&conn), 1);
        set_sync(&conn, false).unwrap();
        assert_eq!(level(&conn), 2, "FULL");
        let batch = |writes: Vec<Write>| writes.iter().all(Write::is_lazy);
        let session = || {
            Box::new(crate::domain::Session::new(
                uuid::Uuid::new_v4(),
                uuid::Uuid::new_v4(),
                Default::default(),
                super::super::fixtures::half_hour(),
                chrono::DateTime::UNIX_EPOCH,
            ))
        };
        assert!(batch(vec![Write::Heartbeat(session(), 1, Vec::new())]));
        assert!(!batch(vec![
            Write::Heartbeat(session(), 1, Vec::new()),
            Write::UpdateSession(session(), 1, Vec::new()),
        ]));
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
            Arc::new(Notify::new()),
            Arc::new(FastReads::new(path.clone())),
            Arc::new(RowCache::default()),
            Arc::new(OutageLog::new("SQLite writes")),
            0,
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
