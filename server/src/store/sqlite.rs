//! `SqliteStore`: the embedded default backend (sqlx, WAL, `synchronous=FULL`).
//!
//! Reads go through a pool of read connections, which WAL lets run beside the writer. Every write goes to one
//! writer task that owns the only write connection: it takes all writes waiting in its queue, applies them in
//! one transaction and commits once (group commit), then answers each caller. A caller is answered only after
//! the commit that contains its write has reached the disk, so nothing acknowledged is lost on a crash, and
//! concurrent writers share one fsync instead of queueing for one each.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::{broadcast, mpsc, oneshot, Mutex};
use uuid::Uuid;

use super::sqlite_reads::FastReads;
use super::{
    from_ms, to_ms, EventBus, MessageWindow, Order, SessionCounts, SessionFilter, SessionStore,
    StoreError,
};
use crate::domain::{Agent, EventKind, Message, Notice, Session, SessionEvent, TimeoutConfig};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Most writes committed together; bounds the time one commit holds the write lock.
const MAX_BATCH: usize = 512;
/// Writes waiting for the writer; callers wait for room beyond this (backpressure).
const QUEUE_DEPTH: usize = 4096;

pub struct SqliteStore {
    reads: SqlitePool,
    /// The hot lookups, synchronous (see `sqlite_reads.rs` for why).
    fast: FastReads,
    writes: mpsc::Sender<Job>,
    /// Tells the writer to finish what is queued and stop; `close` awaits it.
    writer: Mutex<Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>>,
    /// Committed events go out here, published by the writer in commit order.
    bus: Arc<EventBus>,
}

/// One write, as data, so that the writer can apply many of them in one transaction.
enum Write {
    InsertAgent(Agent),
    DeleteAgent(Uuid),
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
}

/// `messages.reply_state` values.
mod reply_state {
    pub const NONE: i64 = 0;
    pub const PENDING: i64 = 1;
    pub const IN_PROGRESS: i64 = 2;
    pub const ANSWERED: i64 = 3;
    pub const FAILED: i64 = 4;
}

/// What a write did: rows affected, the seq of an inserted message, and the events to announce once the
/// transaction has committed (persisted ones carrying their new seq).
#[derive(Default)]
struct Applied {
    rows: u64,
    seq: Option<i64>,
    message: Option<Message>,
    publish: Vec<SessionEvent>,
}

struct Job {
    write: Write,
    done: oneshot::Sender<Result<Applied, StoreError>>,
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
        // An in-memory database lives on one connection, but reads use their own pool: insist on a file.
        if url.contains(":memory:") || file.as_os_str().is_empty() {
            anyhow::bail!("sqlite in-memory databases are not supported: give a file path (a temp file in tests)");
        }
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut writer = SqliteConnection::connect_with(&options).await?;
        MIGRATOR.run(&mut writer).await?;
        let reads = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options.read_only(true))
            .await?;
        let bus = Arc::new(EventBus::default());
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (stop, stopped) = oneshot::channel();
        let handle = tokio::spawn(run_writer(writer, rx, stopped, bus.clone()));
        Ok(Self {
            reads,
            fast: FastReads::new(file),
            writes: tx,
            writer: Mutex::new(Some((stop, handle))),
            bus,
        })
    }

    async fn write(&self, write: Write) -> Result<Applied, StoreError> {
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
    bus: Arc<EventBus>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    break;
                }
                commit_and_answer(&mut conn, &mut batch, &bus).await;
            }
            _ = &mut stop => {
                // Refuse new writes, but commit every write already accepted.
                rx.close();
                while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                    commit_and_answer(&mut conn, &mut batch, &bus).await;
                }
                break;
            }
        }
    }
    let _ = conn.close().await;
}

/// Commits a batch, announces its events in commit order, then answers each caller.
async fn commit_and_answer(conn: &mut SqliteConnection, batch: &mut Vec<Job>, bus: &EventBus) {
    let outcomes = apply_batch(conn, batch).await;
    for outcome in outcomes.iter().flatten() {
        for event in &outcome.publish {
            bus.publish(event);
        }
    }
    for (job, outcome) in batch.drain(..).zip(outcomes) {
        let _ = job.done.send(outcome);
    }
}

/// Applies every write in one transaction. A write that fails alone (SQLite rolls back just that statement)
/// reports its error; if the commit itself fails, every write in the batch reports it.
async fn apply_batch(
    conn: &mut SqliteConnection,
    batch: &[Job],
) -> Vec<Result<Applied, StoreError>> {
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

/// Stores the persistent events (assigning their seq) and returns all of them for announcement.
async fn store_events(
    conn: &mut SqliteConnection,
    events: &[SessionEvent],
) -> Result<Vec<SessionEvent>, sqlx::Error> {
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let mut event = event.clone();
        if !event.kind.is_transient() {
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO events (session_id, kind, data, created_at) VALUES (?1, ?2, ?3, ?4) RETURNING seq",
            )
            .bind(event.session_id)
            .bind(event.kind.as_str())
            .bind(event.data.to_string())
            .bind(to_ms(event.created_at))
            .fetch_one(&mut *conn)
            .await?;
            event.seq = Some(seq);
        }
        out.push(event);
    }
    Ok(out)
}

async fn insert_message(
    conn: &mut SqliteConnection,
    m: &Message,
    state: i64,
    only_if_session: bool,
) -> Result<Option<i64>, sqlx::Error> {
    let guard = if only_if_session {
        " WHERE EXISTS (SELECT 1 FROM sessions WHERE id = ?2)"
    } else {
        ""
    };
    let sql = format!(
        "INSERT INTO messages (id, session_id, author_id, is_agent, content, metadata, attachments, created_at, \
         in_reply_to, reply_state) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10{guard} RETURNING seq"
    );
    sqlx::query_scalar(&sql)
        .bind(m.id)
        .bind(m.session_id)
        .bind(m.author_id)
        .bind(m.is_agent)
        .bind(&m.content)
        .bind(serde_json::to_string(&m.metadata).unwrap_or_default())
        .bind(
            m.attachments
                .as_ref()
                .map(|a| serde_json::to_string(a).unwrap_or_default()),
        )
        .bind(to_ms(m.created_at))
        .bind(m.in_reply_to)
        .bind(state)
        .fetch_optional(&mut *conn)
        .await
}

async fn update_session_row(
    conn: &mut SqliteConnection,
    s: &Session,
    expected: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE sessions SET last_activity = ?1, last_renewal = ?2, expires_at = ?3, timeout_minutes = ?4, \
         auto_renew = ?5, max_duration_minutes = ?6, warning_threshold_minutes = ?7, metadata = ?8, \
         renewal_count = ?9, version = ?10, notice = ?11, warn_at = ?12 WHERE id = ?13 AND version = ?14",
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
    .bind(s.notice as i64)
    .bind(to_ms(s.warn_at()))
    .bind(s.id)
    .bind(expected)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

async fn apply(conn: &mut SqliteConnection, write: &Write) -> Result<Applied, sqlx::Error> {
    let rows = |rows| Applied {
        rows,
        ..Default::default()
    };
    Ok(match write {
        Write::InsertAgent(a) => rows(
            sqlx::query(
                "INSERT INTO agents (id, name, backend, session_defaults, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(a.id)
            .bind(&a.name)
            .bind(serde_json::to_string(&a.backend).unwrap_or_default())
            .bind(serde_json::to_string(&a.session_defaults).unwrap_or_default())
            .bind(to_ms(a.created_at))
            .execute(&mut *conn)
            .await?
            .rows_affected(),
        ),
        Write::DeleteAgent(id) => {
            let n = sqlx::query("DELETE FROM agents WHERE id = ?1")
                .bind(id)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            if n > 0 {
                for sql in [
                    "DELETE FROM messages WHERE session_id IN (SELECT id FROM sessions WHERE agent_id = ?1)",
                    "DELETE FROM events WHERE session_id IN (SELECT id FROM sessions WHERE agent_id = ?1)",
                    "DELETE FROM sessions WHERE agent_id = ?1",
                ] {
                    sqlx::query(sql).bind(id).execute(&mut *conn).await?;
                }
            }
            rows(n)
        }
        Write::InsertSession(s) => rows(
            sqlx::query(
                "INSERT INTO sessions (id, channel_id, agent_id, user_id, created_at, last_activity, last_renewal, \
                 expires_at, timeout_minutes, auto_renew, max_duration_minutes, warning_threshold_minutes, \
                 metadata, renewal_count, version, notice, warn_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
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
            .bind(s.notice as i64)
            .bind(to_ms(s.warn_at()))
            .execute(&mut *conn)
            .await?
            .rows_affected(),
        ),
        Write::UpdateSession(s, expected, events) => {
            let n = update_session_row(conn, s, *expected).await?;
            let publish = if n > 0 { store_events(conn, events).await? } else { Vec::new() };
            Applied {
                rows: n,
                seq: None,
                message: None,
                publish,
            }
        }
        Write::DeleteSession(id, events) => {
            sqlx::query("DELETE FROM messages WHERE session_id = ?1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM events WHERE session_id = ?1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            let n = sqlx::query("DELETE FROM sessions WHERE id = ?1")
                .bind(id)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            Applied {
                rows: n,
                seq: None,
                message: None,
                publish: if n > 0 { events.clone() } else { Vec::new() },
            }
        }
        Write::Purge { cutoff, limit } => {
            // The same deterministic subquery names the same sessions in all three statements.
            let victims = "SELECT id FROM sessions WHERE expires_at <= ?1 ORDER BY expires_at, id LIMIT ?2";
            for table in ["messages", "events"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE session_id IN ({victims})"))
                    .bind(cutoff)
                    .bind(limit)
                    .execute(&mut *conn)
                    .await?;
            }
            rows(
                sqlx::query(&format!("DELETE FROM sessions WHERE id IN ({victims})"))
                    .bind(cutoff)
                    .bind(limit)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected(),
            )
        }
        Write::RecordMessage(s, expected, m, events) => {
            if update_session_row(conn, s, *expected).await? == 0 {
                return Ok(Applied::default());
            }
            let seq = insert_message(conn, m, reply_state::PENDING, false).await?;
            Applied {
                rows: 1,
                seq,
                message: None,
                publish: store_events(conn, events).await?,
            }
        }
        Write::InsertReply(m, events) => match insert_message(conn, m, reply_state::NONE, true).await? {
            None => Applied::default(),
            Some(seq) => Applied {
                rows: 1,
                seq: Some(seq),
                message: None,
                publish: store_events(conn, events).await?,
            },
        },
        Write::ClaimReply {
            session_id,
            now,
            stale_before,
        } => {
            // The writer applies one write at a time, so this check-then-claim cannot race.
            let busy: Option<i64> = sqlx::query_scalar(
                "SELECT seq FROM messages WHERE session_id = ?1 AND reply_state = ?2 AND claimed_at > ?3 LIMIT 1",
            )
            .bind(session_id)
            .bind(reply_state::IN_PROGRESS)
            .bind(stale_before)
            .fetch_optional(&mut *conn)
            .await?;
            if busy.is_some() {
                return Ok(Applied::default());
            }
            let row = sqlx::query(&format!(
                "UPDATE messages SET reply_state = ?2, claimed_at = ?3 WHERE seq = (SELECT seq FROM messages \
                 WHERE session_id = ?1 AND (reply_state = ?4 OR (reply_state = ?2 AND claimed_at <= ?5)) \
                 ORDER BY seq LIMIT 1) RETURNING {MESSAGE_COLUMNS}"
            ))
            .bind(session_id)
            .bind(reply_state::IN_PROGRESS)
            .bind(now)
            .bind(reply_state::PENDING)
            .bind(stale_before)
            .fetch_optional(&mut *conn)
            .await?;
            Applied {
                rows: u64::from(row.is_some()),
                message: row.as_ref().map(message_from_row).transpose()?,
                ..Default::default()
            }
        }
        Write::FinishReply(user_message_id, reply, events) => {
            let state = if reply.is_some() {
                reply_state::ANSWERED
            } else {
                reply_state::FAILED
            };
            let ours = sqlx::query("UPDATE messages SET reply_state = ?2 WHERE id = ?1 AND reply_state = ?3")
                .bind(user_message_id)
                .bind(state)
                .bind(reply_state::IN_PROGRESS)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            if ours == 0 {
                return Ok(Applied::default());
            }
            if let Some(m) = reply {
                if insert_message(conn, m, reply_state::NONE, true).await?.is_none() {
                    return Ok(Applied::default());
                }
            }
            Applied {
                rows: 1,
                publish: store_events(conn, events).await?,
                ..Default::default()
            }
        }
    })
}

pub(super) const SESSION_COLUMNS: &str = "id, channel_id, agent_id, user_id, created_at, last_activity, last_renewal, \
    expires_at, timeout_minutes, auto_renew, max_duration_minutes, warning_threshold_minutes, metadata, \
    renewal_count, version, notice";

pub(super) const MESSAGE_COLUMNS: &str =
    "seq, id, session_id, author_id, is_agent, content, metadata, attachments, created_at, in_reply_to";

fn decode(e: serde_json::Error) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}

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
        metadata: serde_json::from_str(&metadata).map_err(decode)?,
        renewal_count: row.try_get(13)?,
        version: row.try_get(14)?,
        notice: Notice::from_i64(row.try_get(15)?),
    })
}

fn message_from_row(row: &SqliteRow) -> Result<Message, sqlx::Error> {
    let metadata: String = row.try_get(6)?;
    let attachments: Option<String> = row.try_get(7)?;
    Ok(Message {
        seq: row.try_get(0)?,
        id: row.try_get(1)?,
        session_id: row.try_get(2)?,
        author_id: row.try_get(3)?,
        is_agent: row.try_get(4)?,
        content: row.try_get(5)?,
        metadata: serde_json::from_str(&metadata).map_err(decode)?,
        attachments: attachments
            .map(|a| serde_json::from_str(&a))
            .transpose()
            .map_err(decode)?,
        created_at: from_ms(row.try_get(8)?),
        in_reply_to: row.try_get(9)?,
    })
}

fn event_from_row(row: &SqliteRow) -> Result<SessionEvent, sqlx::Error> {
    let kind: String = row.try_get(2)?;
    let data: String = row.try_get(3)?;
    Ok(SessionEvent {
        seq: Some(row.try_get(0)?),
        session_id: row.try_get(1)?,
        kind: EventKind::parse(&kind)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown event kind {kind}").into()))?,
        data: serde_json::from_str(&data).map_err(decode)?,
        created_at: from_ms(row.try_get(4)?),
    })
}

fn agent_from_row(row: &SqliteRow) -> Result<Agent, sqlx::Error> {
    let backend: String = row.try_get(2)?;
    let defaults: String = row.try_get(3)?;
    Ok(Agent {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        backend: serde_json::from_str(&backend).map_err(decode)?,
        session_defaults: serde_json::from_str(&defaults).map_err(decode)?,
        created_at: from_ms(row.try_get(4)?),
    })
}

fn all<T>(
    rows: &[SqliteRow],
    f: fn(&SqliteRow) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, StoreError> {
    rows.iter()
        .map(f)
        .collect::<Result<_, _>>()
        .map_err(backend)
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn insert_agent(&self, agent: &Agent) -> Result<(), StoreError> {
        self.write(Write::InsertAgent(agent.clone()))
            .await
            .map(drop)
    }

    async fn get_agent(&self, id: Uuid) -> Result<Option<Agent>, StoreError> {
        self.fast.agent(id)
    }

    async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, backend, session_defaults, created_at FROM agents ORDER BY created_at, id",
        )
        .fetch_all(&self.reads)
        .await
        .map_err(backend)?;
        all(&rows, agent_from_row)
    }

    async fn delete_agent(&self, id: Uuid) -> Result<bool, StoreError> {
        Ok(self.write(Write::DeleteAgent(id)).await?.rows > 0)
    }

    async fn insert_session(&self, session: &Session) -> Result<(), StoreError> {
        self.write(Write::InsertSession(Box::new(session.clone())))
            .await
            .map(drop)
    }

    async fn get_session(&self, id: Uuid) -> Result<Option<Session>, StoreError> {
        self.fast.session(id)
    }

    async fn update_session(
        &self,
        session: &Session,
        expected_version: i64,
        events: Vec<SessionEvent>,
    ) -> Result<bool, StoreError> {
        let applied = self
            .write(Write::UpdateSession(
                Box::new(session.clone()),
                expected_version,
                events,
            ))
            .await?;
        Ok(applied.rows > 0)
    }

    async fn delete_session(
        &self,
        id: Uuid,
        events: Vec<SessionEvent>,
    ) -> Result<bool, StoreError> {
        Ok(self.write(Write::DeleteSession(id, events)).await?.rows > 0)
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
        all(&rows, session_from_row)
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
               COALESCE(SUM(expires_at > ?1 AND warn_at <= ?1), 0) \
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
        Ok(self
            .write(Write::Purge {
                cutoff: to_ms(cutoff),
                limit,
            })
            .await?
            .rows)
    }

    async fn sessions_due_notice(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE notice < 2 AND warn_at <= ?1 \
             AND (notice = 0 OR expires_at <= ?1) ORDER BY warn_at LIMIT ?2"
        ))
        .bind(to_ms(now))
        .bind(limit)
        .fetch_all(&self.reads)
        .await
        .map_err(backend)?;
        all(&rows, session_from_row)
    }

    async fn record_message(
        &self,
        session: &Session,
        expected_version: i64,
        message: &Message,
        events: Vec<SessionEvent>,
    ) -> Result<Option<i64>, StoreError> {
        let applied = self
            .write(Write::RecordMessage(
                Box::new(session.clone()),
                expected_version,
                Box::new(message.clone()),
                events,
            ))
            .await?;
        Ok(applied.seq)
    }

    async fn insert_reply(
        &self,
        message: &Message,
        events: Vec<SessionEvent>,
    ) -> Result<bool, StoreError> {
        let applied = self
            .write(Write::InsertReply(Box::new(message.clone()), events))
            .await?;
        Ok(applied.rows > 0)
    }

    async fn claim_reply(
        &self,
        session_id: Uuid,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<Option<Message>, StoreError> {
        let applied = self
            .write(Write::ClaimReply {
                session_id,
                now: to_ms(now),
                stale_before: to_ms(stale_before),
            })
            .await?;
        Ok(applied.message)
    }

    async fn finish_reply(
        &self,
        user_message_id: Uuid,
        reply: Option<&Message>,
        events: Vec<SessionEvent>,
    ) -> Result<bool, StoreError> {
        let reply = reply.map(|m| Box::new(m.clone()));
        let applied = self
            .write(Write::FinishReply(user_message_id, reply, events))
            .await?;
        Ok(applied.rows > 0)
    }

    async fn sessions_with_stalled_replies(
        &self,
        stale_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        sqlx::query_scalar(
            "SELECT DISTINCT session_id FROM messages WHERE reply_state IN (1, 2) \
             AND ((reply_state = 1 AND created_at <= ?1) OR (reply_state = 2 AND claimed_at <= ?1)) LIMIT ?2",
        )
        .bind(to_ms(stale_before))
        .bind(limit)
        .fetch_all(&self.reads)
        .await
        .map_err(backend)
    }

    async fn list_messages(
        &self,
        session_id: Uuid,
        window: MessageWindow,
        order: Order,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        self.fast.messages(session_id, window, order, limit)
    }

    async fn recent_messages(
        &self,
        session_id: Uuid,
        before_seq: i64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
        ))
        .bind(session_id)
        .bind(before_seq)
        .bind(limit)
        .fetch_all(&self.reads)
        .await
        .map_err(backend)?;
        let mut messages = all(&rows, message_from_row)?;
        messages.reverse();
        Ok(messages)
    }

    async fn events_after(
        &self,
        session_id: Uuid,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<SessionEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, session_id, kind, data, created_at FROM events \
             WHERE session_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .bind(session_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.reads)
        .await
        .map_err(backend)?;
        all(&rows, event_from_row)
    }

    fn subscribe(&self, session_id: Uuid) -> broadcast::Receiver<SessionEvent> {
        self.bus.subscribe(session_id)
    }

    fn publish(&self, event: &SessionEvent) {
        self.bus.publish(event);
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
