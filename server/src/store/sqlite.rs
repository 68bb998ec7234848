//! `SqliteStore`: the embedded default backend (sqlx, WAL, `synchronous=FULL`).
//!
//! Reads go through a pool of read connections, which WAL lets run beside the writer. Every write goes to one
//! writer task that owns the only write connection: it takes all writes waiting in its queue, applies them in
//! one transaction and commits once (group commit), then answers each caller. A caller is answered only after
//! the commit that contains its write has reached the disk, so nothing acknowledged is lost on a crash, and
//! concurrent writers share one fsync instead of queueing for one each.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

use super::{from_ms, to_ms, SessionCounts, SessionFilter, SessionStore, StoreError};
use crate::domain::{Agent, Session, TimeoutConfig};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Most writes committed together; bounds the time one commit holds the write lock.
const MAX_BATCH: usize = 512;
/// Writes waiting for the writer; callers wait for room beyond this (backpressure).
const QUEUE_DEPTH: usize = 4096;

pub struct SqliteStore {
    reads: SqlitePool,
    writes: mpsc::Sender<Job>,
    /// Tells the writer to finish what is queued and stop; `close` awaits it.
    writer: Mutex<Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>>,
}

/// One write, as data, so that the writer can apply many of them in one transaction.
enum Write {
    InsertAgent(Agent),
    DeleteAgent(Uuid),
    InsertSession(Box<Session>),
    UpdateSession(Box<Session>, i64),
    DeleteSession(Uuid),
    Purge { cutoff: i64, limit: u32 },
}

struct Job {
    write: Write,
    /// Rows affected, sent after the commit.
    done: oneshot::Sender<Result<u64, StoreError>>,
}

fn backend(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            StoreError::Unavailable(e.to_string())
        }
        e => StoreError::Backend(e.to_string()),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database a `sqlite:` URL names, and runs the migrations.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before it is acknowledged. Group commit pays for it.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .disable_statement_logging();
        let file = options.get_filename().to_path_buf();
        let in_memory = url.contains(":memory:") || file.as_os_str().is_empty();
        if !in_memory {
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
        }
        let mut writer = SqliteConnection::connect_with(&options).await?;
        MIGRATOR.run(&mut writer).await?;
        // An in-memory database exists only on its one connection, so reads must share the writer's file;
        // tests use temp files instead, and `:memory:` is served by a single shared connection.
        let reads = if in_memory {
            anyhow::bail!(
                "sqlite::memory: is not supported: use a file path (a temp file in tests)"
            );
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .min_connections(1)
                .connect_with(options.read_only(true))
                .await?
        };
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (stop, stopped) = oneshot::channel();
        let handle = tokio::spawn(run_writer(writer, rx, stopped));
        Ok(Self {
            reads,
            writes: tx,
            writer: Mutex::new(Some((stop, handle))),
        })
    }

    async fn write(&self, write: Write) -> Result<u64, StoreError> {
        let (done, rx) = oneshot::channel();
        self.writes
            .send(Job { write, done })
            .await
            .map_err(|_| StoreError::Unavailable("store is closed".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?
    }
}

async fn run_writer(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Job>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    break;
                }
                commit_and_answer(&mut conn, &mut batch).await;
            }
            _ = &mut stop => {
                // Refuse new writes, but commit every write already accepted.
                rx.close();
                while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                    commit_and_answer(&mut conn, &mut batch).await;
                }
                break;
            }
        }
    }
    let _ = conn.close().await;
}

async fn commit_and_answer(conn: &mut SqliteConnection, batch: &mut Vec<Job>) {
    let outcomes = apply_batch(conn, batch).await;
    for (job, outcome) in batch.drain(..).zip(outcomes) {
        let _ = job.done.send(outcome);
    }
}

/// Applies every write in one transaction. A write that fails alone (SQLite rolls back just that statement)
/// reports its error; if the commit itself fails, every write in the batch reports it.
async fn apply_batch(conn: &mut SqliteConnection, batch: &[Job]) -> Vec<Result<u64, StoreError>> {
    if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
        let e = backend(e);
        return batch.iter().map(|_| Err(e.clone())).collect();
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        outcomes.push(apply(conn, &job.write).await.map_err(backend));
    }
    if let Err(e) = sqlx::query("COMMIT").execute(&mut *conn).await {
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        let e = backend(e);
        return batch.iter().map(|_| Err(e.clone())).collect();
    }
    outcomes
}

async fn apply(conn: &mut SqliteConnection, write: &Write) -> Result<u64, sqlx::Error> {
    let affected = match write {
        Write::InsertAgent(a) => sqlx::query(
            "INSERT INTO agents (id, name, backend, session_defaults, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(a.id)
        .bind(&a.name)
        .bind(serde_json::to_string(&a.backend).unwrap_or_default())
        .bind(serde_json::to_string(&a.session_defaults).unwrap_or_default())
        .bind(to_ms(a.created_at))
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        Write::DeleteAgent(id) => {
            let n = sqlx::query("DELETE FROM agents WHERE id = ?")
                .bind(id)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            if n > 0 {
                sqlx::query("DELETE FROM sessions WHERE agent_id = ?")
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
            }
            n
        }
        Write::InsertSession(s) => sqlx::query(
            "INSERT INTO sessions (id, channel_id, agent_id, user_id, created_at, last_activity, last_renewal, \
             expires_at, timeout_minutes, auto_renew, max_duration_minutes, warning_threshold_minutes, metadata, \
             renewal_count, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(s.id)
        .bind(s.channel_id)
        .bind(s.agent_id)
        .bind(s.user_id)
        .bind(to_ms(s.created_at))
        .bind(to_ms(s.last_activity))
        .bind(to_ms(s.last_renewal))
        .bind(to_ms(s.expires_at))
        .bind(s.timeout.timeout_minutes)
        .bind(s.timeout.auto_renew)
        .bind(s.timeout.max_duration_minutes)
        .bind(s.timeout.warning_threshold_minutes)
        .bind(serde_json::to_string(&s.metadata).unwrap_or_default())
        .bind(s.renewal_count)
        .bind(s.version)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        Write::UpdateSession(s, expected) => sqlx::query(
            "UPDATE sessions SET last_activity = ?, last_renewal = ?, expires_at = ?, timeout_minutes = ?, \
             auto_renew = ?, max_duration_minutes = ?, warning_threshold_minutes = ?, metadata = ?, \
             renewal_count = ?, version = ? WHERE id = ? AND version = ?",
        )
        .bind(to_ms(s.last_activity))
        .bind(to_ms(s.last_renewal))
        .bind(to_ms(s.expires_at))
        .bind(s.timeout.timeout_minutes)
        .bind(s.timeout.auto_renew)
        .bind(s.timeout.max_duration_minutes)
        .bind(s.timeout.warning_threshold_minutes)
        .bind(serde_json::to_string(&s.metadata).unwrap_or_default())
        .bind(s.renewal_count)
        .bind(s.version)
        .bind(s.id)
        .bind(expected)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        Write::DeleteSession(id) => sqlx::query("DELETE FROM sessions WHERE id = ?")
            .bind(id)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
        Write::Purge { cutoff, limit } => sqlx::query(
            "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE expires_at <= ? LIMIT ?)",
        )
        .bind(cutoff)
        .bind(limit)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
    };
    Ok(affected)
}

const SESSION_COLUMNS: &str = "id, channel_id, agent_id, user_id, created_at, last_activity, last_renewal, \
    expires_at, timeout_minutes, auto_renew, max_duration_minutes, warning_threshold_minutes, metadata, \
    renewal_count, version";

fn session_from_row(row: &SqliteRow) -> Result<Session, sqlx::Error> {
    let metadata: String = row.try_get(12)?;
    Ok(Session {
        id: row.try_get(0)?,
        channel_id: row.try_get(1)?,
        agent_id: row.try_get(2)?,
        user_id: row.try_get(3)?,
        created_at: from_ms(row.try_get(4)?),
        last_activity: from_ms(row.try_get(5)?),
        last_renewal: from_ms(row.try_get(6)?),
        expires_at: from_ms(row.try_get(7)?),
        timeout: TimeoutConfig {
            timeout_minutes: row.try_get(8)?,
            auto_renew: row.try_get(9)?,
            max_duration_minutes: row.try_get(10)?,
            warning_threshold_minutes: row.try_get(11)?,
        },
        metadata: serde_json::from_str(&metadata).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        renewal_count: row.try_get(13)?,
        version: row.try_get(14)?,
    })
}

fn agent_from_row(row: &SqliteRow) -> Result<Agent, sqlx::Error> {
    let backend: String = row.try_get(2)?;
    let defaults: String = row.try_get(3)?;
    let decode = |e: serde_json::Error| sqlx::Error::Decode(Box::new(e));
    Ok(Agent {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        backend: serde_json::from_str(&backend).map_err(decode)?,
        session_defaults: serde_json::from_str(&defaults).map_err(decode)?,
        created_at: from_ms(row.try_get(4)?),
    })
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn insert_agent(&self, agent: &Agent) -> Result<(), StoreError> {
        self.write(Write::InsertAgent(agent.clone()))
            .await
            .map(drop)
    }

    async fn get_agent(&self, id: Uuid) -> Result<Option<Agent>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, backend, session_defaults, created_at FROM agents WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.reads)
        .await
        .map_err(backend)?;
        row.as_ref()
            .map(agent_from_row)
            .transpose()
            .map_err(backend)
    }

    async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, backend, session_defaults, created_at FROM agents ORDER BY created_at, id",
        )
        .fetch_all(&self.reads)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(agent_from_row)
            .collect::<Result<_, _>>()
            .map_err(backend)
    }

    async fn delete_agent(&self, id: Uuid) -> Result<bool, StoreError> {
        Ok(self.write(Write::DeleteAgent(id)).await? > 0)
    }

    async fn insert_session(&self, session: &Session) -> Result<(), StoreError> {
        self.write(Write::InsertSession(Box::new(session.clone())))
            .await
            .map(drop)
    }

    async fn get_session(&self, id: Uuid) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.reads)
        .await
        .map_err(backend)?;
        row.as_ref()
            .map(session_from_row)
            .transpose()
            .map_err(backend)
    }

    async fn update_session(
        &self,
        session: &Session,
        expected_version: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .write(Write::UpdateSession(
                Box::new(session.clone()),
                expected_version,
            ))
            .await?;
        Ok(n > 0)
    }

    async fn delete_session(&self, id: Uuid) -> Result<bool, StoreError> {
        Ok(self.write(Write::DeleteSession(id)).await? > 0)
    }

    async fn list_active_sessions(
        &self,
        filter: &SessionFilter,
        active_at: DateTime<Utc>,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE expires_at > ?1 \
             AND (?2 IS NULL OR agent_id = ?2) AND (?3 IS NULL OR user_id = ?3) \
             ORDER BY created_at DESC, id DESC LIMIT ?4 OFFSET ?5"
        ))
        .bind(to_ms(active_at))
        .bind(filter.agent_id)
        .bind(filter.user_id)
        .bind(limit)
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .fetch_all(&self.reads)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(session_from_row)
            .collect::<Result<_, _>>()
            .map_err(backend)
    }

    async fn count_sessions(
        &self,
        filter: &SessionFilter,
        now: DateTime<Utc>,
        retained_after: DateTime<Utc>,
    ) -> Result<SessionCounts, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*), \
               COALESCE(SUM(expires_at > ?1), 0), \
               COALESCE(SUM(expires_at > ?1 AND \
                 expires_at - CAST(ROUND(warning_threshold_minutes * 60000) AS INTEGER) <= ?1), 0) \
             FROM sessions WHERE expires_at > ?2 \
               AND (?3 IS NULL OR agent_id = ?3) AND (?4 IS NULL OR user_id = ?4)",
        )
        .bind(to_ms(now))
        .bind(to_ms(retained_after))
        .bind(filter.agent_id)
        .bind(filter.user_id)
        .fetch_one(&self.reads)
        .await
        .map_err(backend)?;
        let get = |i: usize| {
            row.try_get::<i64, _>(i)
                .map(|n| n.max(0) as u64)
                .map_err(backend)
        };
        Ok(SessionCounts {
            total: get(0)?,
            active: get(1)?,
            expiring_soon: get(2)?,
        })
    }

    async fn purge_sessions(&self, cutoff: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        self.write(Write::Purge {
            cutoff: to_ms(cutoff),
            limit,
        })
        .await
    }

    async fn close(&self) {
        let writer = self.writer.lock().await.take();
        if let Some((stop, handle)) = writer {
            let _ = stop.send(());
            let _ = handle.await;
        }
        self.reads.close().await;
    }
}
