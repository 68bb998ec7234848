//! The SQLite store's checkpoint thread: it copies the WAL into the database file in the background and keeps
//! the WAL from growing under continuous writes, without stalling the writer or the readers for long.

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use super::reads::FastReads;
use super::rows::store_error as failed;
use crate::outage::OutageLog;
use crate::store::StoreError;

/// A WAL file larger than this is truncated once writes pause (see `truncate_when_idle`).
const WAL_KEEP_BYTES: u64 = 64 * 1024 * 1024;

/// The checkpoint thread's state: its own connection, the database file (to flush it, see `passive`), the WAL's
/// path, and how far the WAL has been copied into the database file.
pub struct Checkpointer {
    conn: Connection,
    database_file: std::fs::File,
    wal: std::path::PathBuf,
    copied: i64,
    /// Frames in the WAL at the last pass: the same at the next means no commit came between.
    frames: i64,
    /// The writer's: a checkpoint failing for lack of space or access is the same outage as a failing commit.
    outage: Arc<OutageLog>,
}

impl Checkpointer {
    pub fn open(path: &Path, outage: Arc<OutageLog>) -> anyhow::Result<Self> {
        let conn = Connection::open(path)?;
        // Spin, don't sleep, and give up soon: see `restart_wal`.
        conn.busy_handler(Some(spin_briefly))?;
        let database_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        Ok(Self {
            conn,
            database_file,
            wal: wal.into(),
            copied: 0,
            frames: 0,
            outage,
        })
    }

    /// Starts the checkpoint thread, which runs until `writer_gone` disconnects (the writer thread ended).
    pub fn spawn(self, reads: Arc<FastReads>, writer_gone: Receiver<()>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || self.run_until(&reads, writer_gone))
            .map(drop)
    }

    /// Copies committed WAL pages into the database file every `INTERVAL`, without blocking the writer or
    /// readers (PASSIVE), and starts the WAL over every `RESTART_EVERY` of them (see `restart_wal`); stops when
    /// the writer stops.
    fn run_until(mut self, reads: &FastReads, writer_gone: Receiver<()>) {
        const INTERVAL: Duration = Duration::from_millis(200);
        const RESTART_EVERY: u32 = 5;
        let mut round = 0u32;
        while let Err(RecvTimeoutError::Timeout) = writer_gone.recv_timeout(INTERVAL) {
            round = round.wrapping_add(1);
            let result = if round.is_multiple_of(RESTART_EVERY) {
                self.restart_wal(reads)
            } else {
                self.passive(reads)
                    .and_then(|idle| self.truncate_when_idle(idle, reads))
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
    /// always follows a PASSIVE checkpoint, and some reader always holds a recent snapshot), and the WAL grows
    /// without bound. A RESTART checkpoint holds off the writer while it copies the few frames the last PASSIVE
    /// round left and waits for the readers still in the WAL, which `release_snapshots_for` makes a matter of
    /// microseconds.
    fn restart_wal(&mut self, reads: &FastReads) -> rusqlite::Result<()> {
        // Copy what is there without holding off anyone first, so that RESTART has little left to copy.
        self.passive(reads)?;
        reads.release_snapshots_for(|| {
            self.conn
                .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
        })
    }

    /// Copies what it can of the WAL into the database file without blocking anyone, then flushes the database
    /// file to disk if that copied anything. Why the flush: SQLite syncs the database file only at the end of a
    /// checkpoint that copied the whole WAL, which under continuous writes is only the RESTART of
    /// `restart_wal`, and that one holds off the writer: it then had a second of copied pages to flush, all of
    /// it a stall of every write. Flushed here, outside SQLite's locks, the RESTART's own sync has only its last
    /// few pages to write. An extra sync never weakens durability. Idle readers' out-of-date snapshots are
    /// ended first, for the same reason (see `FastReads::end_stale_snapshots`).
    ///
    /// Whether no commit came since the last pass.
    fn passive(&mut self, reads: &FastReads) -> rusqlite::Result<bool> {
        reads.end_stale_snapshots();
        let (frames, copied): (i64, i64) =
            self.conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                    Ok((row.get(1)?, row.get(2)?))
                })?;
        let idle = frames == self.frames;
        self.frames = frames;
        if copied != self.copied {
            self.copied = copied;
            if let Err(e) = self.database_file.sync_data() {
                self.outage.failed(&format_args!(
                    "syncing the database file after a checkpoint: {e}"
                ));
            }
        }
        Ok(idle)
    }

    /// Gives a WAL that grew beyond `WAL_KEEP_BYTES` under a burst of writes its space back, once writes pause
    /// (`idle`: no commit since the last pass). Why then: the truncation holds off the writer while the file
    /// system frees the space, tens of milliseconds for a busy second's WAL, which is harmless only while no
    /// one writes.
    fn truncate_when_idle(&mut self, idle: bool, reads: &FastReads) -> rusqlite::Result<()> {
        // Looked at only when idle: no file-system call every pass under load.
        if !idle || std::fs::metadata(&self.wal).map_or(0, |m| m.len()) <= WAL_KEEP_BYTES {
            return Ok(());
        }
        reads.release_snapshots_for(|| {
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        })?;
        self.frames = 0;
        Ok(())
    }
}

/// The checkpoint connection's busy handler: retry at once (yielding the CPU) rather than sleep, and give up
/// after a few milliseconds. SQLite's own handler sleeps 1, 2, 5... up to 100 ms between tries; a RESTART
/// checkpoint that waits for the writer lock that way rarely finds the writer between two batches, and once
/// it holds that lock, each sleep while a reader finishes stalls every write (the tail latency of writes
/// showed it).
/// Giving up is harmless: the next round tries again.
fn spin_briefly(attempts: i32) -> bool {
    const MAX_ATTEMPTS: i32 = 20_000;
    std::thread::yield_now();
    attempts < MAX_ATTEMPTS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL grown past `WAL_KEEP_BYTES` is truncated at the first pass that finds no new commit, and not
    /// while commits go on.
    #[test]
    fn a_grown_wal_is_truncated_once_writes_pause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let writer = Connection::open(&path).unwrap();
        writer.pragma_update(None, "journal_mode", "WAL").unwrap();
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        writer
            .pragma_update(None, "journal_size_limit", -1)
            .unwrap();
        writer.execute_batch("CREATE TABLE t (b BLOB)").unwrap();
        let write = |mb: usize| {
            writer.execute_batch("BEGIN").unwrap();
            for _ in 0..mb {
                writer
                    .execute("INSERT INTO t VALUES (zeroblob(1048576))", [])
                    .unwrap();
            }
            writer.execute_batch("COMMIT").unwrap();
        };
        write(70);
        let reads = FastReads::new(path.clone());
        let mut checkpointer = Checkpointer::open(&path, Arc::new(OutageLog::new("test"))).unwrap();
        let wal_size = || {
            std::fs::metadata(dir.path().join("t.db-wal"))
                .unwrap()
                .len()
        };
        assert!(wal_size() > WAL_KEEP_BYTES);

        let idle = checkpointer.passive(&reads).unwrap();
        assert!(!idle, "the first pass found new frames");
        checkpointer.truncate_when_idle(idle, &reads).unwrap();
        write(1);
        let idle = checkpointer.passive(&reads).unwrap();
        assert!(!idle, "a commit came since the last pass");
        checkpointer.truncate_when_idle(idle, &reads).unwrap();
        assert!(
            wal_size() > WAL_KEEP_BYTES,
            "not truncated while writes go on"
        );

        let idle = checkpointer.passive(&reads).unwrap();
        assert!(idle);
        checkpointer.truncate_when_idle(idle, &reads).unwrap();
        assert_eq!(wal_size(), 0, "truncated once writes paused");
        // Nothing was lost on the way.
        let rows: i64 = writer
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 71);
    }
}
