//! `SqliteStore`: the embedded default backend (WAL, `synchronous=FULL`).
//!
//! Migrations use sqlx. Reads run synchronously on the calling thread (`reads.rs`), and every write goes to one
//! writer thread with group commit (`writer.rs`, applying `writes.rs`), beside a checkpoint thread
//! (`checkpoint.rs`): both because sqlx's per-statement thread hand-offs dominated the profiles of those
//! paths. WAL lets all readers run beside the writer. Rows are read and written through `rows.rs`; the
//! webhook tables' statements are in `webhooks.rs`; heartbeats go to a log folded into the rows in batches
//! (`activity.rs`), and scans of session rows wait for that fold (`settled`); short message histories are
//! kept whole in the row cache and pages of them answered from memory (`history.rs`).

mod activity;
mod cache;
mod checkpoint;
#[cfg(test)]
pub(crate) mod fixtures;
mod history;
mod idempotency;
mod reads;
mod rows;
mod webhooks;
mod writer;
mod writes;

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

use self::cache::RowCache;
use self::history::History;
use self::reads::FastReads;
use self::writer::Job;
use self::writes::{Applied, Write};
use super::schema::{
    direction, events_after_with_horizon, ReplyState, AGENT_COLUMNS, AWAITING_REPLY,
    MESSAGE_COLUMNS, SESSION_COLUMNS,
};
use super::{
    from_ms, to_ms, AgentDeletion, ClaimAt, DeliveryCounts, EventBus, EventReplay, LiveEvents,
    MessageWindow, Order, Recorded, SessionCounts, SessionFilter, SessionStore, StoreError,
    StoreOptions,
};
use crate::domain::{
    Agent, ClaimOutcome, Delivery, DeliveryOutcome, IdempotencyKey, IdempotencyRecord, KeyClaim,
    Message, Session, SessionEvent, StoredResponse, Webhook,
};
use crate::outage::OutageLog;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    /// The hot lookups, synchronous (see `reads.rs` for why).
    fast: Arc<FastReads>,
    /// Recently read and written sessions and agents (see `cache.rs` for why, and why they are never stale).
    cache: Arc<RowCache>,
    /// The writer thread's queue (see `writer.rs`); None once closed.
    writes: std::sync::Mutex<Option<mpsc::Sender<Job>>>,
    /// Committed events go out here, published by the writer in commit order.
    bus: Arc<EventBus>,
    /// Notified by the writer after commits that queued webhook deliveries.
    queued: Arc<Notify>,
    /// Whether commits fail for lack of space or access (a full disk, a read-only file), as the writer last
    /// found: logged once per outage, and the health check looks closer while it lasts.
    write_outage: Arc<OutageLog>,
    /// The directory of the database file, whose file system's free space the health check looks at.
    dir: PathBuf,
}

/// Free space below which a store whose writes failed is taken to be on a full disk: a small write may still
/// fit in the WAL's old frames then, but anything that needs new space fails.
const MIN_FREE_BYTES: u64 = 1 << 20;

/// The query of `count_sessions`: `?1` the moment counted at, `?2` the retention cutoff, and with `by_owner`
/// `?3` and `?4` the agent and user filters (NULL: any). Without them it names no other column than the expiry
/// index holds (migration 0009), so it reads that index alone: the health route's count of every session reads
/// no session row.
fn count_sql(by_owner: bool) -> String {
    let owner = if by_owner {
        " AND (?3 IS NULL OR agent_id = ?3) AND (?4 IS NULL OR user_id = ?4)"
    } else {
        ""
    };
    format!(
        "SELECT COUNT(*) AS total, COALESCE(SUM(expires_at > ?1), 0) AS active, \
         COALESCE(SUM(expires_at > ?1 AND warn_at <= ?1), 0) AS expiring_soon \
         FROM sessions WHERE expires_at > ?2{owner}"
    )
}

/// Bytes an unprivileged writer may still use on the file system holding `dir`; None where that is unknown.
fn free_bytes(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::fs::statvfs(dir)
            .ok()
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database a `sqlite:` URL names, and runs the migrations; default options.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        Self::open_with(url, &StoreOptions::default()).await
    }

    /// `open`, with these options (the acquire timeout is PostgreSQL's alone).
    pub async fn open_with(url: &str, store_options: &StoreOptions) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before it is acknowledged. Group commit pays for it.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .disable_statement_logging();
        let file = options.get_filename().to_path_buf();
        // An in-memory database lives on one connection, but reads and the writer use their own: insist on a file.
        if url.contains(":memory:") || file.as_os_str().is_empty() {
            anyhow::bail!("sqlite in-memory databases are not supported: give a file path (a temp file in tests)");
        }
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "cannot create the directory {} for the SQLite database (DATABASE_URL / --database-url)",
                    dir.display()
                )
            })?;
        }
        let cannot_open = || {
            format!(
                "cannot open the SQLite database {} (DATABASE_URL / --database-url)",
                file.display()
            )
        };
        // Migrations through sqlx (embedded, versioned); then the writer thread takes over the file.
        let mut migrator = SqliteConnection::connect_with(&options)
            .await
            .with_context(cannot_open)?;
        MIGRATOR
            .run(&mut migrator)
            .await
            .with_context(cannot_open)?;
        migrator.close().await?;
        let bus = Arc::new(EventBus::default());
        let fast = Arc::new(FastReads::new(file.clone()));
        let cache = Arc::new(RowCache::default());
        let write_outage = Arc::new(OutageLog::new("SQLite writes"));
        let queued = Arc::new(Notify::new());
        let writes = writer::spawn(
            &file,
            bus.clone(),
            queued.clone(),
            fast.clone(),
            cache.clone(),
            write_outage.clone(),
            store_options.events_per_session,
        )?;
        let dir = match file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(Self {
            fast,
            cache,
            writes: std::sync::Mutex::new(Some(writes)),
            bus,
            queued,
            write_outage,
            dir,
        })
    }

    fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.fast.one(
            "SELECT value FROM settings WHERE name = ?1",
            [name],
            |row| row.get(0),
        )
    }

    /// The writer's queue, unless the store is closed.
    fn queue(&self) -> Option<mpsc::Sender<Job>> {
        self.writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Applies `write`; whether it changed anything.
    async fn changed(&self, write: Write) -> Result<bool, StoreError> {
        Ok(self.write(write).await?.rows > 0)
    }

    /// Waits until every heartbeat acknowledged so far is in its session's row (the writer folds the heartbeat
    /// log, if it holds anything): for reads that scan session rows rather than look one up.
    async fn settled(&self) -> Result<(), StoreError> {
        if self.cache.pinned() > 0 {
            self.write(Write::Settle).await?;
        }
        Ok(())
    }

    async fn write(&self, write: Write) -> Result<Applied, StoreError> {
        let closed = || StoreError::Unavailable("store is closed".into());
        let queue = self.queue().ok_or_else(closed)?;
        let (done, rx) = oneshot::channel();
        queue
            .send(Job::Write { write, done })
            .await
            .map_err(|_| closed())?;
        rx.await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?
    }
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn insert_agent(&self, agent: &Agent) -> Result<(), StoreError> {
        self.write(Write::InsertAgent(agent.clone()))
            .await
            .map(drop)
    }

    async fn get_agent(&self, id: Uuid) -> Result<Option<Agent>, StoreError> {
        static SQL: LazyLock<String> =
            LazyLock::new(|| format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = ?1"));
        self.cache
            .agent_or_read(id, &self.fast, || self.fast.one(&SQL, [id], rows::agent()))
    }

    async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        self.fast.rows(
            &format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY created_at, id"),
            [],
            rows::agent(),
        )
    }

    async fn delete_agent(
        &self,
        id: Uuid,
        active_at: DateTime<Utc>,
    ) -> Result<AgentDeletion, StoreError> {
        let applied = self.write(Write::DeleteAgent(id, to_ms(active_at))).await?;
        Ok(match (applied.rows, applied.seq) {
            (0, Some(active)) => AgentDeletion::InUse(active.max(0) as u64),
            (0, None) => AgentDeletion::NotFound,
            _ => AgentDeletion::Deleted,
        })
    }

    async fn insert_session(&self, session: &Session) -> Result<bool, StoreError> {
        self.changed(Write::InsertSession(Box::new(session.clone())))
            .await
    }

    async fn get_session(&self, id: Uuid) -> Result<Option<Session>, StoreError> {
        // Built once: the hottest lookup of all should not format its SQL on every call.
        static SQL: LazyLock<String> =
            LazyLock::new(|| format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"));
        self.cache.session_or_read(id, &self.fast, || {
            self.fast.one(&SQL, [id], rows::session())
        })
    }

    async fn session_by_channel(&self, channel_id: Uuid) -> Result<Option<Session>, StoreError> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE channel_id = ?1")
        });
        self.settled().await?;
        self.fast.one(&SQL, [channel_id], rows::session())
    }

    async fn update_session(
        &self,
        session: &Session,
        expected_version: i64,
        events: Vec<SessionEvent>,
    ) -> Result<bool, StoreError> {
        let session = Box::new(session.clone());
        self.changed(Write::UpdateSession(session, expected_version, events))
            .await
    }

    async fn record_heartbeat(
        &self,
        session: &Session,
        expected_version: i64,
        events: Vec<SessionEvent>,
    ) -> Result<bool, StoreError> {
        let session = Box::new(session.clone());
        self.changed(Write::Heartbeat(session, expected_version, events))
            .await
    }

    async fn delete_session(
        &self,
        id: Uuid,
        events: Vec<SessionEvent>,
    ) -> Result<bool, StoreError> {
        self.changed(Write::DeleteSession(id, events)).await
    }

    async fn list_active_sessions(
        &self,
        filter: &SessionFilter,
        active_at: DateTime<Utc>,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<Session>, StoreError> {
        self.settled().await?;
        self.fast.rows(
            &format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE expires_at > ?1 \
                 AND (?2 IS NULL OR agent_id = ?2) AND (?3 IS NULL OR user_id = ?3) \
                 ORDER BY created_at DESC, id DESC LIMIT ?4 OFFSET ?5"
            ),
            rusqlite::params![
                to_ms(active_at),
                filter.agent_id,
                filter.user_id,
                limit,
                i64::try_from(offset).unwrap_or(i64::MAX)
            ],
            rows::session(),
        )
    }

    async fn count_sessions(
        &self,
        filter: &SessionFilter,
        now: DateTime<Utc>,
        retained_after: DateTime<Utc>,
    ) -> Result<SessionCounts, StoreError> {
        self.settled().await?;
        // A count reads every retained session: on the blocking pool, not on the runtime worker that asked, where
        // it stalled every request queued on that worker for as long (on a large store).
        let (fast, filter) = (self.fast.clone(), filter.clone());
        let counts = tokio::task::spawn_blocking(move || {
            let (now, retained_after) = (to_ms(now), to_ms(retained_after));
            if filter.agent_id.is_none() && filter.user_id.is_none() {
                return fast.rows(
                    &count_sql(false),
                    rusqlite::params![now, retained_after],
                    rows::session_counts(),
                );
            }
            fast.rows(
                &count_sql(true),
                rusqlite::params![now, retained_after, filter.agent_id, filter.user_id],
                rows::session_counts(),
            )
        })
        .await
        .unwrap_or_else(|e| {
            Err(StoreError::Backend(format!(
                "counting sessions failed: {e}"
            )))
        })?;
        Ok(counts.into_iter().next().unwrap_or_default())
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
        // Without waiting for a whole fold: a row whose heartbeats are still in the log looks due sooner than
        // it is, and the announcement's conditional update (on the version, after the writer folds) refuses it.
        // The nudge lets the writer fold a log that waits while nothing else is written, so a warning due only
        // by a heartbeat's renewal is announced within a pass or two.
        if self.cache.pinned() > 0 {
            self.write(Write::Nudge).await?;
        }
        self.fast.rows(
            &format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE notice < 2 AND warn_at <= ?1 \
                 AND (notice = 0 OR expires_at <= ?1) ORDER BY warn_at LIMIT ?2"
            ),
            rusqlite::params![to_ms(now), limit],
            rows::session(),
        )
    }

    async fn record_message(
        &self,
        session: &Session,
        expected_version: i64,
        message: &Message,
        events: Vec<SessionEvent>,
        claim: Option<ClaimAt>,
    ) -> Result<Option<Recorded>, StoreError> {
        let claim = claim.map(|at| (to_ms(at.now), to_ms(at.stale_before)));
        let applied = self
            .write(Write::RecordMessage(
                Box::new(session.clone()),
                expected_version,
                Box::new(message.clone()),
                events,
                claim,
            ))
            .await?;
        Ok(applied.seq.map(|seq| Recorded {
            seq,
            claimed: applied.message,
        }))
    }

    async fn insert_reply(
        &self,
        message: &Message,
        events: Vec<SessionEvent>,
    ) -> Result<bool, StoreError> {
        self.changed(Write::InsertReply(Box::new(message.clone()), events))
            .await
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
        self.changed(Write::FinishReply(user_message_id, reply, events))
            .await
    }

    async fn sessions_with_stalled_replies(
        &self,
        stale_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        self.fast.rows(
            &format!(
                "SELECT DISTINCT session_id FROM messages WHERE {} \
                 AND ((reply_state = ?3 AND created_at <= ?1) OR (reply_state = ?4 AND claimed_at <= ?1)) \
                 LIMIT ?2",
                *AWAITING_REPLY
            ),
            rusqlite::params![
                to_ms(stale_before),
                limit,
                ReplyState::Pending,
                ReplyState::InProgress
            ],
            |row| row.get(0),
        )
    }

    async fn list_messages(
        &self,
        session_id: Uuid,
        window: MessageWindow,
        order: Order,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        static WHOLE: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ?1 \
                 ORDER BY created_at, seq LIMIT ?2"
            )
        });
        let history = self.cache.history_or_read(session_id, &self.fast, || {
            let first = self.fast.rows(
                &WHOLE,
                rusqlite::params![session_id, history::MOST_KEPT + 1],
                rows::message(),
            )?;
            Ok(History::of(first))
        })?;
        if let Some(page) = history.page(window, order, limit) {
            return Ok(page);
        }
        let direction = direction(order);
        self.fast.rows(
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ?1 \
                 AND (?2 IS NULL OR created_at > ?2) AND (?3 IS NULL OR created_at < ?3) \
                 ORDER BY created_at {direction}, seq {direction} LIMIT ?4"
            ),
            rusqlite::params![session_id, window.after_ms, window.before_ms, limit],
            rows::message(),
        )
    }

    async fn recent_messages(
        &self,
        session_id: Uuid,
        before_seq: i64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let mut messages = self.fast.rows(
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ?1 AND seq < ?2 \
                 ORDER BY seq DESC LIMIT ?3"
            ),
            rusqlite::params![session_id, before_seq, limit],
            rows::message(),
        )?;
        messages.reverse();
        Ok(messages)
    }

    async fn replay_events(
        &self,
        session_id: Uuid,
        after_seq: i64,
        limit: u32,
    ) -> Result<EventReplay, StoreError> {
        static SQL: LazyLock<String> = LazyLock::new(|| events_after_with_horizon('?'));
        let found = self.fast.rows(
            &SQL,
            rusqlite::params![session_id, after_seq, limit],
            rows::event_with_horizon(),
        )?;
        Ok(EventReplay::from_rows(found))
    }

    fn subscribe(&self, session_id: Uuid) -> LiveEvents {
        self.bus.subscribe(session_id)
    }

    fn publish(&self, event: &SessionEvent) {
        self.bus.publish(event);
    }

    async fn count_active_sessions_of_user(
        &self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.settled().await?;
        let n: Vec<i64> = self.fast.rows(
            "SELECT COUNT(*) FROM sessions WHERE user_id = ?1 AND expires_at > ?2",
            rusqlite::params![user_id, to_ms(now)],
            |row| row.get(0),
        )?;
        Ok(n.first().copied().unwrap_or(0).max(0) as u64)
    }

    async fn count_messages(&self, session_id: Uuid, up_to: u32) -> Result<u64, StoreError> {
        let n: Vec<i64> = self.fast.rows(
            "SELECT COUNT(*) FROM (SELECT 1 FROM messages WHERE session_id = ?1 LIMIT ?2)",
            rusqlite::params![session_id, up_to],
            |row| row.get(0),
        )?;
        Ok(n.first().copied().unwrap_or(0).max(0) as u64)
    }

    async fn count_unanswered(&self, session_id: Uuid) -> Result<u64, StoreError> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT COUNT(*) FROM messages WHERE session_id = ?1 AND {}",
                *AWAITING_REPLY
            )
        });
        let n: Vec<i64> = self.fast.rows(&SQL, [session_id], |row| row.get(0))?;
        Ok(n.first().copied().unwrap_or(0).max(0) as u64)
    }

    async fn claim_idempotency_key(&self, claim: &KeyClaim) -> Result<ClaimOutcome, StoreError> {
        let applied = self.write(Write::ClaimKey(Box::new(claim.clone()))).await?;
        applied
            .key_claim
            .ok_or_else(|| StoreError::Backend("an idempotency claim had no outcome".into()))
    }

    async fn complete_idempotency_key(
        &self,
        key: &IdempotencyKey,
        owner: Uuid,
        response: &StoredResponse,
    ) -> Result<bool, StoreError> {
        let (key, response) = (Box::new(key.clone()), Box::new(response.clone()));
        self.changed(Write::CompleteKey(key, owner, response)).await
    }

    async fn release_idempotency_key(
        &self,
        key: &IdempotencyKey,
        owner: Uuid,
    ) -> Result<bool, StoreError> {
        self.changed(Write::ReleaseKey(Box::new(key.clone()), owner))
            .await
    }

    async fn get_idempotency_key(
        &self,
        key: &IdempotencyKey,
        now: DateTime<Utc>,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.fast.one(
            &idempotency::SELECT,
            rusqlite::params![key.principal, key.scope, key.key, to_ms(now)],
            rows::idempotency_record(),
        )
    }

    async fn purge_idempotency_keys(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let purge = Write::PurgeKeys {
            now: to_ms(now),
            limit,
        };
        Ok(self.write(purge).await?.rows)
    }

    async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String, StoreError> {
        if let Some(stored) = self.setting(name)? {
            return Ok(stored);
        }
        self.write(Write::InsertSetting {
            name: name.to_string(),
            value: value.to_string(),
        })
        .await?;
        self.setting(name)?
            .ok_or_else(|| StoreError::Backend(format!("setting '{name}' was not stored")))
    }

    async fn insert_webhook(&self, webhook: &Webhook) -> Result<(), StoreError> {
        self.write(Write::InsertWebhook(Box::new(webhook.clone())))
            .await
            .map(drop)
    }

    async fn list_webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        self.fast.rows(&webhooks::LIST, [], rows::webhook())
    }

    async fn delete_webhook(&self, id: Uuid) -> Result<bool, StoreError> {
        self.changed(Write::DeleteWebhook(id)).await
    }

    async fn next_delivery_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let due: Vec<Option<i64>> = self.fast.rows(&webhooks::NEXT_DUE, [], |row| row.get(0))?;
        Ok(due.into_iter().flatten().next().map(from_ms))
    }

    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        claim: Uuid,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        let applied = self
            .write(Write::ClaimDeliveries {
                now: to_ms(now),
                lease_until: to_ms(lease_until),
                claim,
                limit,
            })
            .await?;
        Ok(applied.deliveries)
    }

    async fn finish_delivery(
        &self,
        seq: i64,
        claim: Uuid,
        outcome: &DeliveryOutcome,
    ) -> Result<bool, StoreError> {
        self.changed(Write::FinishDelivery {
            seq,
            claim,
            outcome: outcome.clone(),
        })
        .await
    }

    async fn purge_failed_deliveries(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        Ok(self
            .write(Write::PurgeFailedDeliveries {
                before: to_ms(before),
                limit,
            })
            .await?
            .rows)
    }

    async fn delivery_counts(&self) -> Result<DeliveryCounts, StoreError> {
        let counts: Vec<(i64, i64)> = self
            .fast
            .rows(&webhooks::COUNTS, [], |row| Ok((row.get(0)?, row.get(1)?)))?;
        let (pending, failed) = counts.first().copied().unwrap_or_default();
        Ok(DeliveryCounts {
            pending: pending.max(0) as u64,
            failed: failed.max(0) as u64,
        })
    }

    fn deliveries_queued(&self) -> Arc<Notify> {
        self.queued.clone()
    }

    /// Free while commits succeed. After a commit failed for lack of space or access: the free space, then a
    /// one-row write, so that the health check reports the outage, and notices its end, even when no request
    /// writes meanwhile. (The free space first: on a full disk a one-row write may still fit in the WAL.)
    async fn check_writable(&self) -> Result<(), StoreError> {
        match self.queue().as_ref() {
            None => return Err(StoreError::Unavailable("the store is closed".into())),
            Some(queue) if queue.is_closed() => {
                return Err(StoreError::Unavailable(
                    "the SQLite writer thread has stopped: no write can be stored".into(),
                ))
            }
            Some(_) => {}
        }
        if self.write_outage.in_burst() {
            if let Some(free) = free_bytes(&self.dir).filter(|&free| free < MIN_FREE_BYTES) {
                return Err(StoreError::Unavailable(format!(
                    "the disk holding the database has {free} bytes free"
                )));
            }
            self.write(Write::Probe).await?;
        }
        Ok(())
    }

    async fn close(&self) {
        let queue = self.writes.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(queue) = queue {
            let (ack, stopped) = oneshot::channel();
            if queue.send(Job::Stop(ack)).await.is_ok() {
                let _ = stopped.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema::{awaits_reply, claim_next_reply, live_claim};
    use serde_json::Map;

    /// The query plan of each statement, on a migrated store (every parameter bound to NULL).
    async fn plans(statements: &[String]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("plan.db");
        SqliteStore::open(&format!("sqlite:{}", db.display()))
            .await
            .unwrap();
        let conn = rusqlite::Connection::open(&db).unwrap();
        let plan = |sql: &str| -> String {
            let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let nulls = vec![rusqlite::types::Null; statement.parameter_count()];
            let details = statement
                .query_map(rusqlite::params_from_iter(nulls), |row| {
                    row.get::<_, String>(3)
                })
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            details.join("; ")
        };
        statements.iter().map(|sql| plan(sql)).collect()
    }

    /// The count of every session reads the expiry index alone (see `count_sql`).
    #[tokio::test]
    async fn counting_every_session_reads_no_session_row() {
        let plans = plans(&[count_sql(false), count_sql(true)]).await;
        assert_eq!(
            plans[0],
            "SEARCH sessions USING COVERING INDEX sessions_by_expiry (expires_at>?)"
        );
        assert!(!plans[1].contains("COVERING"), "{}", plans[1]);
    }

    /// A purge batch reads its sessions in the expiry index's own order: no sort of every expired session.
    #[tokio::test]
    async fn a_purge_batch_follows_the_expiry_index() {
        let plan = plans(&[writes::PURGE_VICTIMS.to_string()]).await.remove(0);
        assert_eq!(
            plan,
            "SEARCH sessions USING INDEX sessions_by_expiry (expires_at<?)"
        );
    }

    /// Heartbeats acknowledged while they sit in the heartbeat log survive a crash: the files as a crash leaves
    /// them (copied while the writer still runs, the log unfolded) open with each session's latest heartbeat in
    /// its row. A heartbeat that lost its version check to one in the log is refused, as on the row.
    #[tokio::test]
    async fn logged_heartbeats_survive_a_crash_and_start_up_folds_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let t = |ms: i64| DateTime::from_timestamp_millis(1_735_689_600_000 + ms).unwrap();
        let (store, agent) = fixtures::store_with_agent(&path, t(0)).await;
        let config = fixtures::half_hour();
        let new = || Session::new(agent.id, Uuid::new_v4(), Map::new(), config, t(1));
        let (a, b) = (new(), new());
        for s in [&a, &b] {
            assert!(store.insert_session(s).await.unwrap());
        }
        let beat = |s: &Session, at: i64| {
            let mut next = s.clone();
            next.record_activity(t(at));
            next.version += 1;
            next
        };
        let a1 = beat(&a, 60_000);
        let a2 = beat(&a1, 120_000);
        let b1 = beat(&b, 90_000);
        for (next, from) in [(&a1, &a), (&a2, &a1), (&b1, &b)] {
            assert!(store
                .record_heartbeat(next, from.version, Vec::new())
                .await
                .unwrap());
        }
        assert!(
            !store
                .record_heartbeat(&beat(&a, 61_000), a.version, Vec::new())
                .await
                .unwrap(),
            "a stale version is refused while the newer one is in the log"
        );
        assert_eq!(store.cache.pinned(), 2);
        let raw = |db: &Path| rusqlite::Connection::open(db).unwrap();
        let logged = |db: &Path| -> i64 {
            raw(db)
                .query_row("SELECT COUNT(*) FROM heartbeat_log", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(logged(&path), 3, "three heartbeats logged, none folded");

        let crashed = dir.path().join("crashed.db");
        for suffix in ["", "-wal"] {
            let from = format!("{}{suffix}", path.display());
            std::fs::copy(&from, format!("{}{suffix}", crashed.display())).unwrap();
        }
        let reopened = SqliteStore::open(&format!("sqlite:{}", crashed.display()))
            .await
            .unwrap();
        assert_eq!(logged(&crashed), 0, "folded at start-up");
        static SQL: LazyLock<String> =
            LazyLock::new(|| format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"));
        for expected in [&a2, &b1] {
            let row = reopened
                .fast
                .one(&SQL, [expected.id], rows::session())
                .unwrap()
                .unwrap();
            assert_eq!(row.version, expected.version);
            assert_eq!(row.last_activity, expected.last_activity);
            assert_eq!(row.expires_at, expected.expires_at);
            assert_eq!(row.renewal_count, expected.renewal_count);
        }
        SessionStore::close(&reopened).await;
        SessionStore::close(&store).await;
        assert_eq!(logged(&path), 0, "folded when the store closed");
    }

    /// After each kind of write, the row cache serves exactly what a read of the row gives (times in whole
    /// milliseconds, the metadata as stored), and nothing of a deleted or purged session or a deleted agent.
    #[tokio::test]
    async fn the_row_cache_serves_what_the_row_holds() {
        use crate::domain::TimeoutConfig;
        let dir = tempfile::tempdir().unwrap();
        // Sub-millisecond times, which the row does not keep.
        let t =
            |micros: i64| DateTime::from_timestamp_micros(1_735_689_600_000_000 + micros).unwrap();
        let (store, agent) = fixtures::store_with_agent(&dir.path().join("c.db"), t(0)).await;
        let metadata = serde_json::json!({"n": 1.5, "big": 1e300, "neg": -0.0, "s": "é", "deep": [{"z": 1, "a": null}]});
        let config = TimeoutConfig {
            timeout_minutes: 0.1,
            auto_renew: true,
            max_duration_minutes: 1.0 / 3.0,
            warning_threshold_minutes: 0.05,
        };
        let session = Session::new(
            agent.id,
            Uuid::new_v4(),
            metadata.as_object().unwrap().clone(),
            config,
            t(1_234),
        );
        let id = session.id;
        static SQL: LazyLock<String> =
            LazyLock::new(|| format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"));
        let row = || store.fast.one(&SQL, [id], rows::session()).unwrap();
        let cached = || store.cache.session(&id);

        assert!(store.insert_session(&session).await.unwrap());
        assert_eq!(cached(), row(), "after the insert");
        assert!(cached().is_some());

        let mut next = session.clone();
        next.last_activity = t(5_678);
        next.expires_at = t(905_678);
        next.version += 1;
        assert!(store
            .record_heartbeat(&next, session.version, Vec::new())
            .await
            .unwrap());
        // A heartbeat goes to the heartbeat log: its session is pinned (lookups see it) until a fold writes the row.
        assert_eq!(store.cache.pinned(), 1, "pinned");
        assert_eq!(store.get_session(id).await.unwrap(), cached(), "looked up");
        assert_eq!(
            row().unwrap().version,
            session.version,
            "the row waits for a fold"
        );
        store.settled().await.unwrap();
        assert_eq!(store.cache.pinned(), 0, "folded");
        assert_eq!(cached(), row(), "after a heartbeat");

        let mut later = next.clone();
        later.last_renewal = t(9_999);
        later.renewal_count += 1;
        later.version += 1;
        assert!(store
            .update_session(&later, next.version, Vec::new())
            .await
            .unwrap());
        assert_eq!(cached(), row(), "after an update");
        // A write that loses its version check changes nothing, cached or not.
        assert!(!store
            .update_session(&session, session.version, Vec::new())
            .await
            .unwrap());
        assert_eq!(cached(), row(), "after a refused update");

        // A miss is filled by the read, with the same value.
        store.cache.clear();
        let read = store.get_session(id).await.unwrap();
        assert_eq!(cached(), read);
        assert_eq!(read, row());

        assert!(store.delete_session(id, Vec::new()).await.unwrap());
        assert_eq!(cached(), None, "after the delete");
        assert_eq!(store.get_session(id).await.unwrap(), None);

        // A purge forgets the sessions it may have deleted.
        let expired = Session::new(agent.id, Uuid::new_v4(), Map::new(), config, t(0));
        assert!(store.insert_session(&expired).await.unwrap());
        assert!(store.cache.session(&expired.id).is_some());
        assert_eq!(store.purge_sessions(t(10_000_000), 100).await.unwrap(), 1);
        assert_eq!(store.cache.session(&expired.id), None, "after the purge");
        assert_eq!(store.get_session(expired.id).await.unwrap(), None);

        // Agents: a read fills the cache; deleting the agent empties it.
        assert_eq!(store.cache.agent(&agent.id), None);
        assert_eq!(
            store.get_agent(agent.id).await.unwrap(),
            Some(agent.clone())
        );
        assert_eq!(store.cache.agent(&agent.id), Some(agent.clone()));
        let deleted = store.delete_agent(agent.id, t(0)).await.unwrap();
        assert!(matches!(deleted, AgentDeletion::Deleted));
        assert_eq!(store.cache.agent(&agent.id), None);
        assert_eq!(store.get_agent(agent.id).await.unwrap(), None);
        store.close().await;
    }

    /// A reply's claim reads only the messages still waiting for one, in order, not the session's history.
    #[tokio::test]
    async fn a_claim_reads_only_the_messages_awaiting_a_reply() {
        for plan in plans(&[live_claim('?'), claim_next_reply('?'), awaits_reply('?')]).await {
            assert!(
                plan.contains("USING INDEX messages_awaiting_reply (session_id=?)"),
                "{plan}"
            );
            assert!(!plan.contains("messages_by_session"), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
    }
}
