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
//! (`RowCache::committed`, until `unpin`), so lookups see it. The writer folds the whole log before every write
//! that reads or changes session rows, and reads that scan rows (lists, counts) ask for that first
//! (`SqliteStore::settled`); otherwise it folds in steps between batches once the log is due. Where heartbeats do
//! not coalesce (uniform over millions of sessions), sessions with nothing in the log update their rows directly
//! for a while (`Pending::takes`).

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

/// Most sessions with heartbeats in the log before the writer starts folding it: bounds the pinned sessions'
/// memory.
const FOLD_SESSIONS: usize = 16_384;
/// Most heartbeats logged before the writer starts folding them.
const FOLD_ROWS: usize = 131_072;
/// Longest a heartbeat waits before the writer starts folding it while only heartbeats are written.
const FOLD_AFTER: Duration = Duration::from_secs(5);
/// Sessions folded per transaction between two batches. Why in steps: on a large store each row's update reads
/// and dirties pages of its own, and folding a thousand sessions at once held every heartbeat queued behind it
/// for as long (see BENCHMARKS.md).
const FOLD_STEP: usize = 256;
/// Heartbeats a fold deletes from the log per transaction, once it has written every session's row. Why in
/// steps: the log holds up to `FOLD_ROWS` and more, and deleting them at once held the writer for as long.
const CLEAR_STEP: i64 = 16_384;

/// How long heartbeats go straight to their rows after a fold found the log saved too little (`Pending::takes`).
const DIRECT_FOR: Duration = Duration::from_secs(10);

/// The activity columns of a heartbeat, in `SESSION_ACTIVITY_COLUMNS` order; the version is `VERSION`.
type Activity = [i64; 7];
const VERSION: usize = 4;

/// What the writer knows of the log: each session's latest logged activity not yet in its row, the fold under
/// way, and what was logged since it began; the batch being applied apart (`staged`) until its commit.
#[derive(Default)]
pub struct Pending {
    latest: HashMap<Uuid, Activity>,
    staged: Vec<(Uuid, Activity)>,
    /// Heartbeats logged since the fold under way (if any) began, and when the first of them was.
    uncovered: usize,
    since: Option<Instant>,
    fold: Option<Fold>,
    /// Until when a heartbeat of a session with nothing in the log updates its row instead (see `takes`).
    direct_until: Option<Instant>,
}

/// A fold under way, in steps: the sessions it has yet to write, and the last heartbeat of the log it covers
/// (deleted with all before it, in steps, once they are written).
struct Fold {
    left: Vec<Uuid>,
    through: i64,
    /// The heartbeats deleted so far: every one up to this.
    cleared: i64,
    /// The heartbeats it covers, and the sessions they were of.
    heartbeats: usize,
    sessions: usize,
    /// Whether it says how well heartbeats coalesce (`takes`): not when it began only because the oldest
    /// heartbeat had waited long enough. Such a fold may cover a moment's worth: the tail of a burst, folded when
    /// the next one starts, holds a heartbeat or two per session whatever the rate, and judging from it sent
    /// every heartbeat of that next burst to its row.
    judges: bool,
}

/// One step of a fold, written and not yet committed: its sessions, the heartbeats it deleted (every one up to
/// `cleared`), and whether it ends the fold.
pub struct Step {
    ids: Vec<Uuid>,
    cleared: i64,
    ends: bool,
}

impl Step {
    /// The sessions it wrote, to unpin once it is committed.
    pub fn ids(&self) -> &[Uuid] {
        &self.ids
    }
}

impl Pending {
    /// Whether the log holds anything.
    pub fn any(&self) -> bool {
        !self.latest.is_empty() || self.fold.is_some()
    }

    /// Whether the writer should take a step of folding now, once the current batch is answered.
    pub fn due(&self) -> bool {
        self.fold.is_some()
            || self.latest.len() >= FOLD_SESSIONS
            || self.uncovered >= FOLD_ROWS
            || self.since.is_some_and(|t| t.elapsed() >= FOLD_AFTER)
    }

    /// Whether a heartbeat of this session goes to the log: unless the last fold that judges (`Fold::judges`)
    /// found fewer than three heartbeats for every two sessions (uniform heartbeats over many more sessions than
    /// a fold's worth, as on a store of millions), where the log only added a write and a read to each
    /// heartbeat's row update; then for `DIRECT_FOR` only a session already in the log is logged, and the others
    /// update their rows.
    pub fn takes(&self, id: Uuid) -> bool {
        self.direct_until.is_none_or(|t| Instant::now() >= t)
            || self.latest.contains_key(&id)
            || self.staged.iter().any(|(s, _)| *s == id)
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
        self.uncovered += self.staged.len();
        self.latest.extend(self.staged.drain(..));
    }

    /// The batch failed: nothing of it is in the log.
    pub fn discard_staged(&mut self) {
        self.staged.clear();
    }

    /// Folds the whole log into the rows (each session's latest activity, unless its row is as new already)
    /// and empties it, inside the caller's transaction; `folded` once that commits.
    pub fn fold(&self, conn: &Connection) -> rusqlite::Result<()> {
        write_all(conn, &self.latest)
    }

    /// The whole fold committed: the log is empty.
    pub fn folded(&mut self) {
        *self = Self::default();
    }

    /// Writes the next step of the fold under way, beginning one (over every session logged so far) if none is,
    /// inside the caller's transaction; `stepped` once that commits. Once a step has written the fold's last
    /// sessions, it and the steps after it delete the heartbeats the fold covers, `CLEAR_STEP` at a time: each
    /// of their sessions has had its latest activity written by then (a later heartbeat of one of them is logged
    /// after them, and kept). Until they are all deleted, the log's older heartbeats are only stale: a fold
    /// (start-up's included) writes a row only if it is older than the heartbeat.
    pub fn fold_step(&mut self, conn: &Connection) -> rusqlite::Result<Step> {
        if self.fold.is_none() {
            let seq = |sql: &str| -> rusqlite::Result<Option<i64>> {
                conn.prepare_cached(sql)?.query_row([], |row| row.get(0))
            };
            let through = seq("SELECT MAX(seq) FROM heartbeat_log")?.unwrap_or(0);
            let first = seq("SELECT MIN(seq) FROM heartbeat_log")?.unwrap_or(through + 1);
            let full = self.latest.len() >= FOLD_SESSIONS || self.uncovered >= FOLD_ROWS;
            let waited = self.since.is_some_and(|t| t.elapsed() >= FOLD_AFTER);
            self.fold = Some(Fold {
                left: self.latest.keys().copied().collect(),
                through,
                cleared: first - 1,
                heartbeats: self.uncovered,
                sessions: self.latest.len(),
                judges: full || !waited,
            });
            self.uncovered = 0;
            self.since = None;
        }
        let Some(fold) = &self.fold else {
            unreachable!("a fold was just begun")
        };
        let ids: Vec<Uuid> = fold.left.iter().rev().take(FOLD_STEP).copied().collect();
        write_rows(
            conn,
            ids.iter()
                .filter_map(|id| self.latest.get(id).map(|a| (id, a))),
        )?;
        let mut cleared = fold.cleared;
        if ids.len() == fold.left.len() && cleared < fold.through {
            cleared = fold.through.min(cleared.saturating_add(CLEAR_STEP));
            conn.prepare_cached("DELETE FROM heartbeat_log WHERE seq <= ?1")?
                .execute(params![cleared])?;
        }
        let ends = ids.len() == fold.left.len() && cleared >= fold.through;
        Ok(Step { ids, cleared, ends })
    }

    /// A fold step committed: its sessions' rows hold their latest activity.
    pub fn stepped(&mut self, step: &Step) {
        for id in &step.ids {
            self.latest.remove(id);
        }
        if let Some(fold) = &mut self.fold {
            fold.left.truncate(fold.left.len() - step.ids.len());
            fold.cleared = step.cleared;
        }
        if step.ends {
            if let Some(fold) = self.fold.take() {
                self.direct_until = (fold.judges && fold.heartbeats * 2 < fold.sessions * 3)
                    .then(|| Instant::now() + DIRECT_FOR);
            }
        }
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
fn write_rows<'a>(
    conn: &Connection,
    latest: impl Iterator<Item = (&'a Uuid, &'a Activity)>,
) -> rusqlite::Result<()> {
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
    write_all(conn, &latest)
}

/// Writes every session's activity into its row and empties the log.
fn write_all(conn: &Connection, latest: &HashMap<Uuid, Activity>) -> rusqlite::Result<()> {
    write_rows(conn, latest.iter())?;
    conn.prepare_cached("DELETE FROM heartbeat_log")?
        .execute([])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{half_hour, store_with_agent};
    use super::*;
    use crate::store::SessionStore;
    use chrono::DateTime;

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    fn row_version(conn: &Connection, id: Uuid) -> i64 {
        conn.query_row(
            "SELECT version FROM sessions WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )
        .unwrap()
    }

    /// Logs the heartbeat that takes `session` one version on, as the writer does, in a transaction.
    fn beat(conn: &Connection, log: &mut Pending, session: &mut Session) {
        let mut next = session.clone();
        next.version += 1;
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(log.log(conn, &next, session.version).unwrap());
        log.stage(&next).unwrap();
        conn.execute_batch("COMMIT").unwrap();
        log.commit_staged();
        *session = next;
    }

    /// `n` sessions stored through a store that is then closed, and a connection of the writer's kind to its file
    /// (kept in `dir`).
    async fn closed_store_with(dir: &tempfile::TempDir, n: usize) -> (Connection, Vec<Session>) {
        let path = dir.path().join("f.db");
        let at = DateTime::from_timestamp_millis(1_735_689_600_000).unwrap();
        let (store, agent) = store_with_agent(&path, at).await;
        let mut sessions = Vec::new();
        for _ in 0..n {
            let s = Session::new(
                agent.id,
                Uuid::new_v4(),
                Default::default(),
                half_hour(),
                at,
            );
            assert!(store.insert_session(&s).await.unwrap());
            sessions.push(s);
        }
        SessionStore::close(&store).await;
        let conn = Connection::open(&path).unwrap();
        // The closed store's checkpoint thread may still be finishing.
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        (conn, sessions)
    }

    /// One step of the fold, in a transaction, as the writer takes it.
    fn step(conn: &Connection, log: &mut Pending) -> Step {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        let step = log.fold_step(conn).unwrap();
        conn.execute_batch("COMMIT").unwrap();
        log.stepped(&step);
        step
    }

    /// A fold in steps writes each session's latest activity, `FOLD_STEP` sessions per step, and empties the
    /// log with its last step; a heartbeat logged meanwhile for a session already written stays in the log
    /// (and in what the writer remembers) for the next fold.
    #[tokio::test]
    async fn a_fold_in_steps_writes_every_session_then_empties_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let n = FOLD_STEP * 2 + 10;
        let (conn, mut sessions) = closed_store_with(&dir, n).await;
        let mut log = Pending::default();
        for s in &mut sessions {
            beat(&conn, &mut log, s);
        }
        beat(&conn, &mut log, &mut sessions[0]);
        assert_eq!(
            count(&conn, "SELECT COUNT(*) FROM heartbeat_log"),
            n as i64 + 1
        );
        assert!(log.any());

        let mut steps = 0;
        let mut written = Vec::new();
        while log.fold.is_some() || steps == 0 {
            let step = step(&conn, &mut log);
            written.extend_from_slice(step.ids());
            steps += 1;
            if steps == 1 {
                // A session this step wrote gets another heartbeat before the fold ends.
                let again = sessions.iter().position(|s| s.id == step.ids()[0]).unwrap();
                beat(&conn, &mut log, &mut sessions[again]);
            }
        }
        assert_eq!(steps, n.div_ceil(FOLD_STEP));
        assert_eq!(written.len(), n, "each session written once");
        let rewritten = sessions
            .iter()
            .filter(|s| row_version(&conn, s.id) != s.version)
            .count();
        assert_eq!(
            rewritten, 1,
            "all rows hold their latest but the one logged since"
        );
        assert_eq!(
            count(&conn, "SELECT COUNT(*) FROM heartbeat_log"),
            1,
            "the fold's heartbeats deleted, the later one kept"
        );
        assert!(log.any(), "the later heartbeat waits for the next fold");
        // That fold found about one heartbeat per session: the log saved nothing, so for a while a session with
        // nothing in it updates its row directly, and one in it keeps going to the log.
        assert!(!log.takes(Uuid::new_v4()));
        let still = sessions
            .iter()
            .find(|s| log.latest.contains_key(&s.id))
            .unwrap();
        assert!(log.takes(still.id));
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        log.fold(&conn).unwrap();
        conn.execute_batch("COMMIT").unwrap();
        log.folded();
        assert!(!log.any());
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM heartbeat_log"), 0);
        assert!(sessions
            .iter()
            .all(|s| row_version(&conn, s.id) == s.version));
    }

    /// A fold deletes the heartbeats it covers `CLEAR_STEP` at a time, after writing its sessions' rows; while
    /// some wait to be deleted they are only stale, so that a fold of what the log holds (as at start-up, after a
    /// crash between two steps) takes no row back to an older heartbeat.
    #[tokio::test]
    async fn a_fold_deletes_its_heartbeats_in_steps_and_leftovers_are_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, mut sessions) = closed_store_with(&dir, 2).await;
        // Thousands of commits: this test's durability is not the point.
        conn.pragma_update(None, "synchronous", "OFF").unwrap();
        let mut log = Pending::default();
        let beats = CLEAR_STEP as usize + 10;
        for i in 0..beats {
            beat(&conn, &mut log, &mut sessions[i % 2]);
        }
        let logged = |conn: &Connection| count(conn, "SELECT COUNT(*) FROM heartbeat_log");
        assert_eq!(logged(&conn), beats as i64);

        let first = step(&conn, &mut log);
        assert_eq!(first.ids().len(), 2, "both sessions written");
        assert!(
            log.fold.is_some(),
            "the fold goes on while heartbeats it covers remain"
        );
        assert_eq!(logged(&conn), 10, "one step's worth deleted");
        assert!(sessions
            .iter()
            .all(|s| row_version(&conn, s.id) == s.version));

        // A crash here leaves covered heartbeats behind: folding them again changes no row.
        let copy = dir.path().join("copy.db");
        conn.execute("VACUUM INTO ?1", params![copy.to_str().unwrap()])
            .unwrap();
        let crashed = Connection::open(&copy).unwrap();
        crashed.execute_batch("BEGIN IMMEDIATE").unwrap();
        fold_logged(&crashed).unwrap();
        crashed.execute_batch("COMMIT").unwrap();
        assert_eq!(logged(&crashed), 0);
        assert!(sessions
            .iter()
            .all(|s| row_version(&crashed, s.id) == s.version));

        // A heartbeat logged meanwhile stays for the next fold; the last step deletes the rest.
        beat(&conn, &mut log, &mut sessions[0]);
        let last = step(&conn, &mut log);
        assert!(last.ids().is_empty());
        assert!(log.fold.is_none(), "the fold ended");
        assert_eq!(
            logged(&conn),
            1,
            "the fold's heartbeats deleted, the later one kept"
        );
        assert!(log.any());
    }

    /// A fold begun because its oldest heartbeat had waited (the tail of a burst, folded as the next begins)
    /// does not judge how heartbeats coalesce: however few per session it found, heartbeats keep going to the
    /// log. The same fold begun otherwise (for the log's size) sends them to their rows.
    #[tokio::test]
    async fn a_fold_begun_by_time_alone_keeps_heartbeats_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, mut sessions) = closed_store_with(&dir, 4).await;

        let fold_all = |log: &mut Pending| {
            while {
                step(&conn, log);
                log.fold.is_some()
            } {}
        };
        let mut log = Pending::default();
        for s in &mut sessions {
            beat(&conn, &mut log, s);
        }
        log.since = Some(Instant::now() - FOLD_AFTER);
        assert!(log.due());
        fold_all(&mut log);
        assert!(
            log.takes(Uuid::new_v4()),
            "one heartbeat per session, but a tail"
        );

        for s in &mut sessions {
            beat(&conn, &mut log, s);
        }
        // The same fold begun before its heartbeats waited that long (as for the log's size) judges.
        fold_all(&mut log);
        assert!(
            !log.takes(Uuid::new_v4()),
            "one heartbeat per session, judged"
        );
    }
}
