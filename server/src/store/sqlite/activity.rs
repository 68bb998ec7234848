//! The SQLite store's heartbeat log: a heartbeat appended to `heartbeat_log` instead of rewriting its session's
//! row, the versions the writer must check heartbeats against meanwhile, and folding the log into the rows.
//!
//! Why: rewriting the row dirtied a page of the sessions table and one of each of its two activity indexes per
//! heartbeat, all written to the WAL at commit; the writer thread spent most of its time there, and it was the
//! heartbeat's bottleneck (see BENCHMARKS.md). Appended rows fill one page after another, and a fold writes a
//! session's row once for all the heartbeats it had since the last fold.
//!
//! The guarantee is unchanged: an acknowledged heartbeat is in a committed transaction (the log's), so it
//! survives a crash of the process (and of the machine, with `--durable-heartbeats`), and start-up folds what
//! the log holds before anyone reads. While a heartbeat is in the log, the row cache pins the session's state
//! (`RowCache::pin`), so lookups see it; the writer folds before every write that reads or changes session
//! rows, and reads that scan rows (lists, counts, due notices) ask for a fold first (`SqliteStore::settled`).

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::rows::Params;
use crate::domain::Session;
use crate::store::rows::{self, Bind, Param};
use crate::store::schema::{assignments, insert, SESSION_ACTIVITY_COLUMNS};

/// Most sessions with heartbeats in the log before the writer folds it: bounds the pinned sessions' memory
/// and a fold's updates.
const FOLD_SESSIONS: usize = 4096;
/// Most heartbeats in the log before the writer folds it: bounds a fold's pause (emptying the log).
const FOLD_ROWS: usize = 8192;
/// Longest a heartbeat stays in the log while only heartbeats are written.
const FOLD_AFTER: Duration = Duration::from_secs(1);

/// The activity columns of a heartbeat, in `SESSION_ACTIVITY_COLUMNS` order; the version is `VERSION`.
type Activity = [i64; 7];
const VERSION: usize = 4;

/// What the writer knows of the log: each session's latest logged activity, and how many heartbeats the log
/// holds; those of the batch being applied apart (`staged`) until its commit.
#[derive(Default)]
pub struct Pending {
    latest: HashMap<Uuid, Activity>,
    staged: Vec<(Uuid, Activity)>,
    rows: usize,
    since: Option<Instant>,
}

impl Pending {
    /// Whether the log holds anything.
    pub fn any(&self) -> bool {
        self.rows > 0
    }

    /// Whether the log should be folded now, once the current batch is answered.
    pub fn due(&self) -> bool {
        self.latest.len() >= FOLD_SESSIONS
            || self.rows >= FOLD_ROWS
            || self.since.is_some_and(|t| t.elapsed() >= FOLD_AFTER)
    }

    /// Appends the heartbeat that took `session` from version `expected`, if that is still its version; whether
    /// it did (as the row's conditional update would have). The writer `stage`s it once the whole write has
    /// succeeded.
    pub fn log(
        &self,
        conn: &Connection,
        session: &Session,
        expected: i64,
    ) -> rusqlite::Result<bool> {
        if self.version(conn, session.id)? != Some(expected) {
            return Ok(false);
        }
        static SQL: LazyLock<String> = LazyLock::new(|| {
            insert(
                '?',
                "heartbeat_log",
                &format!("session_id, {SESSION_ACTIVITY_COLUMNS}"),
                "",
            )
        });
        let mut statement = conn.prepare_cached(&SQL)?;
        let mut args = Params::new(&mut statement);
        args.bind(session.id)?;
        rows::bind_session_activity(&mut args, session)?;
        args.execute()?;
        Ok(true)
    }

    /// A heartbeat of the batch being applied was logged: its version counts for the batch's later heartbeats,
    /// and for all once the batch commits.
    pub fn stage(&mut self, session: &Session) -> rusqlite::Result<()> {
        self.staged.push((session.id, activity_of(session)?));
        Ok(())
    }

    /// The batch committed: its heartbeats are in the log.
    pub fn commit_staged(&mut self) {
        if !self.staged.is_empty() && self.since.is_none() {
            self.since = Some(Instant::now());
        }
        self.rows += self.staged.len();
        self.latest.extend(self.staged.drain(..));
    }

    /// The batch failed: nothing of it is in the log.
    pub fn discard_staged(&mut self) {
        self.staged.clear();
    }

    /// Folds the log into the rows (each session's latest activity, unless its row is as new already) and
    /// empties it, inside the caller's transaction; `folded` once that commits.
    pub fn fold(&self, conn: &Connection) -> rusqlite::Result<()> {
        write_rows(conn, &self.latest)?;
        conn.prepare_cached("DELETE FROM heartbeat_log")?
            .execute([])?;
        Ok(())
    }

    /// The fold committed: the log is empty.
    pub fn folded(&mut self) {
        *self = Self::default();
    }

    /// The session's version: its latest logged heartbeat's (this batch's first), else its row's.
    fn version(&self, conn: &Connection, id: Uuid) -> rusqlite::Result<Option<i64>> {
        if let Some((_, a)) = self.staged.iter().rev().find(|(s, _)| *s == id) {
            return Ok(Some(a[VERSION]));
        }
        if let Some(a) = self.latest.get(&id) {
            return Ok(Some(a[VERSION]));
        }
        conn.prepare_cached("SELECT version FROM sessions WHERE id = ?1")?
            .query_row(params![id], |row| row.get(0))
            .optional()
    }
}

/// A session's activity columns, as `rows::bind_session_activity` binds them.
fn activity_of(session: &Session) -> rusqlite::Result<Activity> {
    struct Collect(Vec<i64>);
    impl<'v> Bind<'v> for Collect {
        type Error = rusqlite::Error;
        fn bind<T: Param<'v>>(&mut self, value: T) -> rusqlite::Result<()> {
            match value.to_sql()? {
                ToSqlOutput::Borrowed(ValueRef::Integer(n))
                | ToSqlOutput::Owned(Value::Integer(n)) => {
                    self.0.push(n);
                    Ok(())
                }
                _ => Err(rusqlite::Error::ToSqlConversionFailure(
                    "a heartbeat's activity column that is not an integer".into(),
                )),
            }
        }
    }
    let mut collected = Collect(Vec::with_capacity(7));
    rows::bind_session_activity(&mut collected, session)?;
    collected.0.try_into().map_err(|_| {
        rusqlite::Error::ToSqlConversionFailure("a heartbeat's activity is seven columns".into())
    })
}

/// Writes each session's activity into its row, unless the row is already as new.
fn write_rows(conn: &Connection, latest: &HashMap<Uuid, Activity>) -> rusqlite::Result<()> {
    static UPDATE: LazyLock<String> = LazyLock::new(|| {
        let n = SESSION_ACTIVITY_COLUMNS.split(',').count();
        format!(
            "UPDATE sessions SET {} WHERE id = ?{} AND version < ?{}",
            assignments('?', 1, SESSION_ACTIVITY_COLUMNS),
            n + 1,
            n + 2
        )
    });
    let mut update = conn.prepare_cached(&UPDATE)?;
    for (id, a) in latest {
        update.execute(params![
            a[0], a[1], a[2], a[3], a[4], a[5], a[6], id, a[VERSION]
        ])?;
    }
    Ok(())
}

/// Folds what the log holds at start-up, in a transaction of its own, before anyone reads: what it held when
/// the process stopped or crashed reaches the rows. Also the writer's way back after a batch whose outcome is
/// unknown, since it reads the log itself rather than what the writer remembers of it.
pub fn fold_logged(conn: &Connection) -> rusqlite::Result<()> {
    static SELECT: LazyLock<String> = LazyLock::new(|| {
        format!("SELECT session_id, {SESSION_ACTIVITY_COLUMNS} FROM heartbeat_log ORDER BY seq")
    });
    let mut latest: HashMap<Uuid, Activity> = HashMap::new();
    {
        let mut select = conn.prepare_cached(&SELECT)?;
        let mut found = select.query([])?;
        while let Some(row) = found.next()? {
            let mut activity = [0; 7];
            for (i, value) in activity.iter_mut().enumerate() {
                *value = row.get(i + 1)?;
            }
            latest.insert(row.get(0)?, activity);
        }
    }
    write_rows(conn, &latest)?;
    conn.prepare_cached("DELETE FROM heartbeat_log")?
        .execute([])?;
    Ok(())
}
