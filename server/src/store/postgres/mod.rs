//! `PostgresStore`: the backend for one or several server instances sharing a PostgreSQL database, including the
//! delivery of committed events to the subscribers of every instance (LISTEN/NOTIFY). This file is the
//! `SessionStore` implementation and its queries; beside it: `writes.rs` (the statements writes are made of),
//! `idempotency.rs` (idempotency keys), `replay.rs` (reading events back), `notify.rs` (publishing),
//! `listener.rs` (LISTEN, replay after a reconnect), `connection.rs` (failing fast while the database is
//! away), `rows.rs` (rows and arguments), `webhooks.rs` (the webhook tables and the delivery queue).
//!
//! Concurrency is the database's: every session write is a conditional `UPDATE ... WHERE version = $expected`
//! or takes the session row's lock first, so the writes of one session are serialised across processes and
//! each session's events get their `seq` in commit order (which is what resuming after a `Last-Event-ID`
//! needs). Commits are synchronous (the server's `synchronous_commit`, never turned off here).
//!
//! Events: a write that produces events NOTIFYs them inside its transaction, so they are delivered when, and
//! only if, it commits, in commit order; transient events from `publish` (reply chunks) go out through one
//! publisher task, in `publish` order. Each store runs one listener task that receives the channel and feeds
//! its local `EventBus`: the listener is the only source of the bus. A write returns once its own events have
//! come back through the listener, so that, as with SQLite, a write has been announced to this instance's
//! subscribers when it returns.
//!
//! Outages: every query takes its connection through `Connections::acquire`, which fails fast with
//! `StoreError::Unavailable` (503) instead of hanging. The listener reconnects with a bounded exponential
//! backoff, cut short as soon as a request reaches the database again; an outage is logged once when it
//! starts and once when it ends (`OutageLog`).

mod connection;
mod idempotency;
mod listener;
mod notify;
mod replay;
mod rows;
mod webhooks;
mod writes;

use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, Postgres};
use sqlx::{ConnectOptions, Connection, QueryBuilder};
use tokio::sync::{Mutex, Notify};
use tokio::task::JoinHandle;
use uuid::Uuid;

use self::connection::{backend, Connections, Reachability};
use self::listener::{ListenerTask, Shared};
use self::notify::{notify, Publisher};
use self::rows::{all, one};
use super::schema::{
    claim_next_reply, direction, live_claim, ReplyState, AGENT_COLUMNS, AWAITING_REPLY,
    MESSAGE_COLUMNS, SESSION_COLUMNS,
};
use super::{
    from_ms, to_ms, AgentDeletion, ClaimAt, DeliveryCounts, EventReplay, LiveEvents, MessageWindow,
    Order, Recorded, Reused, SessionCounts, SessionFilter, SessionStore, StoreError, StoreOptions,
};
use crate::domain::{
    Agent, ClaimOutcome, Delivery, DeliveryOutcome, IdempotencyKey, IdempotencyRecord, KeyClaim,
    Message, Session, SessionEvent, StoredResponse, Webhook,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PostgresStore {
    /// The query pool, failing fast while the database is away.
    db: Connections,
    /// What the listener task delivers through, and how writers wait for their events to come back.
    shared: Arc<Shared>,
    /// Transient events, sent through the database by the publisher task.
    publisher: Publisher,
    /// How many of its newest events each session's log keeps (0: all).
    events_per_session: u32,
    /// Notified after this store's commits that queued webhook deliveries.
    queued: Arc<Notify>,
    /// The background tasks, taken by `close`. Dropping the store stops both tasks too (the stop signal and
    /// the publisher's queue close with it).
    tasks: Mutex<Option<Tasks>>,
    /// `check_writable`'s answer (a round trip), reused for a second: the health route asks on every call.
    writable: Reused<Result<(), StoreError>>,
}

struct Tasks {
    listener: ListenerTask,
    publisher: JoinHandle<()>,
}

impl PostgresStore {
    /// Whether the database takes writes now (a round trip; see `check_writable`).
    async fn probe_writable(&self) -> Result<(), StoreError> {
        let mut conn = self.db.acquire().await?;
        let read_only = tokio::time::timeout(
            self.db.acquire_timeout,
            sqlx::query_scalar::<_, String>("SELECT current_setting('transaction_read_only')")
                .fetch_one(&mut *conn),
        )
        .await;
        match read_only {
            Ok(Ok(read_only)) if read_only == "off" => Ok(()),
            Ok(Ok(_)) => Err(StoreError::Unavailable(
                "the database is read-only (a standby?)".into(),
            )),
            Ok(Err(e)) => Err(backend(e)),
            Err(_) => {
                // Whatever holds up the connection may hold up the next user: don't hand it back.
                conn.close_on_drop();
                Err(StoreError::Unavailable(
                    "the database did not answer in time".into(),
                ))
            }
        }
    }

    /// `open_with` the default options.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        Self::open_with(url, &StoreOptions::default()).await
    }

    /// Connects to the database a `postgres://` URL names, runs the migrations (under sqlx's advisory lock, so
    /// instances starting together take turns) and starts listening for events. The URL's
    /// `application_name`, if any, names the instance's connections (`pg_stat_activity`).
    pub async fn open_with(url: &str, store_options: &StoreOptions) -> anyhow::Result<Self> {
        let mut options = PgConnectOptions::from_str(url)?.disable_statement_logging();
        if options.get_application_name().is_none() {
            options = options.application_name("agent-sessions-server");
        }
        let acquire_timeout = store_options.acquire_timeout;
        // A connection of its own: a failed migration keeps the advisory lock until its connection closes.
        let mut conn = PgConnection::connect_with(&options).await?;
        MIGRATOR.run(&mut conn).await?;
        conn.close().await?;

        let reach = Arc::new(Reachability::new());
        let db = Connections::open(options.clone(), acquire_timeout, reach.clone()).await?;
        let (shared, listener) =
            listener::start(options, acquire_timeout, db.pool.clone(), reach.clone()).await?;
        let (publisher, publisher_task) = Publisher::start(db.pool.clone(), reach);
        Ok(Self {
            db,
            shared,
            publisher,
            events_per_session: store_options.events_per_session,
            queued: Arc::new(Notify::new()),
            tasks: Mutex::new(Some(Tasks {
                listener,
                publisher: publisher_task,
            })),
            writable: Reused::new(std::time::Duration::from_secs(1)),
        })
    }

    /// Commits `tx` with NOTIFYs for `events`, then waits until the listener has handed them to this store's
    /// subscribers. So, as with SQLite, a write has been announced here when it returns, and a `subscribe`
    /// made after it returns never receives its events. `queued`: the webhook deliveries the transaction
    /// queued, of which this instance's dispatcher hears at once.
    async fn commit_announcing(
        &self,
        mut tx: sqlx::Transaction<'_, Postgres>,
        events: &[SessionEvent],
        queued: u64,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            commit(tx).await?;
            self.announce_queued(queued);
            return Ok(());
        }
        // Checked before committing: if the listener is away now, it replays these events when it is back.
        let listening = self.db.reach.listening.load(Ordering::Acquire);
        let (ack, loopback) = self.shared.loopback();
        notify(&mut *tx, events, Some(ack)).await.map_err(backend)?;
        commit(tx).await?;
        self.announce_queued(queued);
        if listening {
            loopback.wait().await;
        }
        Ok(())
    }

    fn announce_queued(&self, queued: u64) {
        if queued > 0 {
            self.queued.notify_one();
        }
    }

    /// A connection for a write with `events`, once the transient events published before them are out: so
    /// that a reply's last chunks reach subscribers before the stored reply does, as they do with SQLite.
    async fn conn_with_events(
        &self,
        events: &[SessionEvent],
    ) -> Result<PoolConnection<Postgres>, StoreError> {
        if !events.is_empty() {
            self.publisher.flush().await;
        }
        self.db.acquire().await
    }

    /// The session a one-parameter query over the session columns finds.
    async fn session_where(&self, sql: &str, key: Uuid) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(sql)
            .bind(key)
            .fetch_optional(&mut *self.db.acquire().await?)
            .await
            .map_err(backend)?;
        one(row, super::rows::session)
    }
}

/// `AND column = $n` for each filter present. Conditions are left out rather than written as
/// `($n IS NULL OR column = $n)`, so that the planner can use the agent and user indexes with cached plans.
fn push_filter(q: &mut QueryBuilder<'_, Postgres>, filter: &SessionFilter) {
    if let Some(agent) = filter.agent_id {
        q.push(" AND agent_id = ").push_bind(agent);
    }
    if let Some(user) = filter.user_id {
        q.push(" AND user_id = ").push_bind(user);
    }
}

/// `claim_reply`'s claim, in a transaction that holds the session's row lock.
async fn claim_locked(
    tx: &mut PgConnection,
    session_id: Uuid,
    at: ClaimAt,
) -> Result<Option<Message>, StoreError> {
    static LIVE_CLAIM: LazyLock<String> = LazyLock::new(|| live_claim('$'));
    static CLAIM_NEXT: LazyLock<String> = LazyLock::new(|| claim_next_reply('$'));
    let busy = sqlx::query(&LIVE_CLAIM)
        .bind(session_id)
        .bind(ReplyState::InProgress)
        .bind(to_ms(at.stale_before))
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
    if busy.is_some() {
        return Ok(None);
    }
    let claimed = sqlx::query(&CLAIM_NEXT)
        .bind(session_id)
        .bind(ReplyState::InProgress)
        .bind(to_ms(at.now))
        .bind(ReplyState::Pending)
        .bind(to_ms(at.stale_before))
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
    one(claimed, super::rows::message)
}

#[async_trait]
impl SessionStore for PostgresStore {
    async fn insert_agent(&self, agent: &Agent) -> Result<(), StoreError> {
        writes::insert_agent(&mut *self.db.acquire().await?, agent).await
    }

    async fn get_agent(&self, id: Uuid) -> Result<Option<Agent>, StoreError> {
        static SQL: LazyLock<String> =
            LazyLock::new(|| format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1"));
        let row = sqlx::query(&SQL)
            .bind(id)
            .fetch_optional(&mut *self.db.acquire().await?)
            .await
            .map_err(backend)?;
        one(row, super::rows::agent)
    }

    async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        let found = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents ORDER BY created_at, id"
        ))
        .fetch_all(&mut *self.db.acquire().await?)
        .await
        .map_err(backend)?;
        all(&found, super::rows::agent)
    }

    async fn delete_agent(
        &self,
        id: Uuid,
        active_at: DateTime<Utc>,
    ) -> Result<AgentDeletion, StoreError> {
        let mut conn = self.db.acquire().await?;
        let mut tx = conn.begin().await.map_err(backend)?;
        // The row lock waits for any session insert for this agent in flight (they hold a key-share lock on
        // it, see `insert_session`), so that every session of the agent is counted or refused.
        let exists = sqlx::query("SELECT 1 FROM agents WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .is_some();
        if !exists {
            return Ok(AgentDeletion::NotFound);
        }
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sessions WHERE agent_id = $1 AND expires_at > $2",
        )
        .bind(id)
        .bind(to_ms(active_at))
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        if active > 0 {
            return Ok(AgentDeletion::InUse(active as u64));
        }
        let sessions: Vec<Uuid> =
            sqlx::query_scalar("DELETE FROM sessions WHERE agent_id = $1 RETURNING id")
                .bind(id)
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;
        writes::delete_children(&mut tx, &sessions).await?;
        sqlx::query("DELETE FROM agents WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        commit(tx).await?;
        Ok(AgentDeletion::Deleted)
    }

    async fn insert_session(&self, session: &Session) -> Result<bool, StoreError> {
        let mut conn = self.db.acquire().await?;
        let mut tx = conn.begin().await.map_err(backend)?;
        if !writes::insert_session(&mut tx, session).await? {
            return Ok(false);
        }
        let queued = webhooks::queue_created(&mut tx, session).await?;
        commit(tx).await?;
        self.announce_queued(queued);
        Ok(true)
    }

    async fn get_session(&self, id: Uuid) -> Result<Option<Session>, StoreError> {
        static SQL: LazyLock<String> =
            LazyLock::new(|| format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"));
        self.session_where(&SQL, id).await
    }

    async fn session_by_channel(&self, channel_id: Uuid) -> Result<Option<Session>, StoreError> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE channel_id = $1")
        });
        self.session_where(&SQL, channel_id).await
    }

    // Heartbeats keep the trait's `record_heartbeat` (a durable update): with `synchronous_commit = off` a
    // PostgreSQL server stopped under load lost acknowledged renewals (tests/faults/postgres.rs).
    async fn update_session(
        &self,
        session: &Session,
        expected_version: i64,
        events: Vec<SessionEvent>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn_with_events(&events).await?;
        let mut tx = conn.begin().await.map_err(backend)?;
        if writes::update_session_row(&mut tx, session, expected_version).await? == 0 {
            return Ok(false);
        }
        let queued = webhooks::queue_events(&mut tx, &events).await?;
        let events = writes::store_events(&mut tx, &events, self.events_per_session).await?;
        self.commit_announcing(tx, &events, queued).await?;
        Ok(true)
    }

    async fn delete_session(
        &self,
        id: Uuid,
        events: Vec<SessionEvent>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn_with_events(&events).await?;
        let mut tx = conn.begin().await.map_err(backend)?;
        // The session row first: its lock makes a concurrent reply wait, and then find no session, instead of
        // adding a message after the messages were deleted.
        let n = sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        writes::delete_children(&mut tx, &[id]).await?;
        let events = if n > 0 { events } else { Vec::new() };
        let queued = webhooks::queue_events(&mut tx, &events).await?;
        self.commit_announcing(tx, &events, queued).await?;
        Ok(n > 0)
    }

    async fn list_active_sessions(
        &self,
        filter: &SessionFilter,
        active_at: DateTime<Utc>,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<Session>, StoreError> {
        let mut q = QueryBuilder::new(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE expires_at > "
        ));
        q.push_bind(to_ms(active_at));
        push_filter(&mut q, filter);
        q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(i64::from(limit))
            .push(" OFFSET ")
            .push_bind(i64::try_from(offset).unwrap_or(i64::MAX));
        let found = q
            .build()
            .fetch_all(&mut *self.db.acquire().await?)
            .await
            .map_err(backend)?;
        all(&found, super::rows::session)
    }

    async fn count_sessions(
        &self,
        filter: &SessionFilter,
        now: DateTime<Utc>,
        retained_after: DateTime<Utc>,
    ) -> Result<SessionCounts, StoreError> {
        let now = to_ms(now);
        let mut q =
            QueryBuilder::new("SELECT COUNT(*) AS total, COUNT(*) FILTER (WHERE expires_at > ");
        q.push_bind(now)
            .push(") AS active, COUNT(*) FILTER (WHERE expires_at > ")
            .push_bind(now)
            .push(" AND warn_at <= ")
            .push_bind(now)
            .push(") AS expiring_soon FROM sessions WHERE expires_at > ")
            .push_bind(to_ms(retained_after));
        push_filter(&mut q, filter);
        let row = q
            .build()
            .fetch_one(&mut *self.db.acquire().await?)
            .await
            .map_err(backend)?;
        super::rows::session_counts(&row).map_err(backend)
    }

    async fn purge_sessions(&self, cutoff: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let mut conn = self.db.acquire().await?;
        let mut tx = conn.begin().await.map_err(backend)?;
        // SKIP LOCKED: the sweepers of several instances each take sessions nobody else holds, so none is
        // processed twice and a sweeper never waits behind a request (or another sweeper) holding a row.
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "WITH victims AS ( \
               SELECT id FROM sessions WHERE expires_at <= $1 ORDER BY expires_at, id LIMIT $2 \
               FOR UPDATE SKIP LOCKED) \
             DELETE FROM sessions s USING victims v WHERE s.id = v.id RETURNING s.id",
        )
        .bind(to_ms(cutoff))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        writes::delete_children(&mut tx, &ids).await?;
        commit(tx).await?;
        Ok(ids.len() as u64)
    }

    async fn sessions_due_notice(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Session>, StoreError> {
        // A plain read: the caller's updates are conditional on the version read here, so when two instances
        // announce the same session, one update wins and the other changes (and announces) nothing.
        let found = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE notice < 2 AND warn_at <= $1 \
             AND (notice = 0 OR expires_at <= $1) ORDER BY warn_at, id LIMIT $2"
        ))
        .bind(to_ms(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *self.db.acquire().await?)
        .await
        .map_err(backend)?;
        all(&found, super::rows::session)
    }

    async fn record_message(
        &self,
        session: &Session,
        expected_version: i64,
        message: &Message,
        events: Vec<SessionEvent>,
        claim: Option<ClaimAt>,
    ) -> Result<Option<Recorded>, StoreError> {
        let mut conn = self.conn_with_events(&events).await?;
        let mut tx = conn.begin().await.map_err(backend)?;
        // The update takes the session's row lock, which a claim needs (see `claim_reply`).
        if writes::update_session_row(&mut tx, session, expected_version).await? == 0 {
            return Ok(None);
        }
        let seq = writes::insert_message(&mut tx, message, ReplyState::Pending).await?;
        let queued = webhooks::queue_events(&mut tx, &events).await?;
        let events = writes::store_events(&mut tx, &events, self.events_per_session).await?;
        let claimed = match claim {
            Some(at) => claim_locked(&mut tx, session.id, at).await?,
            None => None,
        };
        self.commit_announcing(tx, &events, queued).await?;
        Ok(Some(Recorded { seq, claimed }))
    }

    async fn insert_reply(
        &self,
        message: &Message,
        events: Vec<SessionEvent>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn_with_events(&events).await?;
        let mut tx = conn.begin().await.map_err(backend)?;
        if !writes::lock_session(&mut tx, message.session_id).await? {
            return Ok(false);
        }
        writes::insert_message(&mut tx, message, ReplyState::None).await?;
        let queued = webhooks::queue_events(&mut tx, &events).await?;
        let events = writes::store_events(&mut tx, &events, self.events_per_session).await?;
        self.commit_announcing(tx, &events, queued).await?;
        Ok(true)
    }

    async fn claim_reply(
        &self,
        session_id: Uuid,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<Option<Message>, StoreError> {
        let mut conn = self.db.acquire().await?;
        let mut tx = conn.begin().await.map_err(backend)?;
        // The session's row lock makes check-then-claim atomic across instances: claims, finishes and new
        // messages of one session all take it, so two workers never see the session idle at the same time.
        if !writes::lock_session(&mut tx, session_id).await? {
            return Ok(None);
        }
        let at = ClaimAt { now, stale_before };
        let message = claim_locked(&mut tx, session_id, at).await?;
        commit(tx).await?;
        Ok(message)
    }

    async fn finish_reply(
        &self,
        user_message_id: Uuid,
        reply: Option<&Message>,
        events: Vec<SessionEvent>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn_with_events(&events).await?;
        let mut tx = conn.begin().await.map_err(backend)?;
        let session_id: Option<Uuid> =
            sqlx::query_scalar("SELECT session_id FROM messages WHERE id = $1")
                .bind(user_message_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
        // Session row before message row, as `claim_reply` does, so that the two never deadlock.
        let Some(session_id) = session_id else {
            return Ok(false);
        };
        if !writes::lock_session(&mut tx, session_id).await? {
            return Ok(false);
        }
        let state = if reply.is_some() {
            ReplyState::Answered
        } else {
            ReplyState::Failed
        };
        let ours =
            sqlx::query("UPDATE messages SET reply_state = $2 WHERE id = $1 AND reply_state = $3")
                .bind(user_message_id)
                .bind(state)
                .bind(ReplyState::InProgress)
                .execute(&mut *tx)
                .await
                .map_err(backend)?
                .rows_affected();
        if ours == 0 {
            return Ok(false);
        }
        if let Some(m) = reply {
            writes::insert_message(&mut tx, m, ReplyState::None).await?;
        }
        let queued = webhooks::queue_events(&mut tx, &events).await?;
        let events = writes::store_events(&mut tx, &events, self.events_per_session).await?;
        self.commit_announcing(tx, &events, queued).await?;
        Ok(true)
    }

    async fn sessions_with_stalled_replies(
        &self,
        stale_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT DISTINCT session_id FROM messages WHERE {} \
                 AND ((reply_state = $3 AND created_at <= $1) OR (reply_state = $4 AND claimed_at <= $1)) \
                 LIMIT $2",
                *AWAITING_REPLY
            )
        });
        sqlx::query_scalar(&SQL)
            .bind(to_ms(stale_before))
            .bind(i64::from(limit))
            .bind(ReplyState::Pending)
            .bind(ReplyState::InProgress)
            .fetch_all(&mut *self.db.acquire().await?)
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
        let direction = direction(order);
        let mut q = QueryBuilder::new(format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = "
        ));
        q.push_bind(session_id);
        if let Some(after) = window.after_ms {
            q.push(" AND created_at > ").push_bind(after);
        }
        if let Some(before) = window.before_ms {
            q.push(" AND created_at < ").push_bind(before);
        }
        q.push(format!(
            " ORDER BY created_at {direction}, seq {direction} LIMIT "
        ))
        .push_bind(i64::from(limit));
        let found = q
            .build()
            .fetch_all(&mut *self.db.acquire().await?)
            .await
            .map_err(backend)?;
        all(&found, super::rows::message)
    }

    async fn recent_messages(
        &self,
        session_id: Uuid,
        before_seq: i64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let found = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
        ))
        .bind(session_id)
        .bind(before_seq)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.db.acquire().await?)
        .await
        .map_err(backend)?;
        let mut messages = all(&found, super::rows::message)?;
        messages.reverse();
        Ok(messages)
    }

    async fn replay_events(
        &self,
        session_id: Uuid,
        after_seq: i64,
        limit: u32,
    ) -> Result<EventReplay, StoreError> {
        replay::replay_events(&mut *self.db.acquire().await?, session_id, after_seq, limit).await
    }

    fn subscribe(&self, session_id: Uuid) -> LiveEvents {
        self.shared.subscribe(session_id)
    }

    /// Sends through the database, not to the local bus: the listener delivers it here as everywhere else.
    /// A chunk too large for one NOTIFY is split into parts and joined again by the listeners, so subscribers
    /// get it whole. Sent by one task in `publish` order; if the database cannot be reached it is dropped
    /// (transient events are live only, and nothing waits for them).
    fn publish(&self, event: &SessionEvent) {
        self.publisher.publish(event);
    }

    async fn count_active_sessions_of_user(
        &self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sessions WHERE user_id = $1 AND expires_at > $2",
        )
        .bind(user_id)
        .bind(to_ms(now))
        .fetch_one(&mut *self.db.acquire().await?)
        .await
        .map_err(backend)?;
        Ok(n.max(0) as u64)
    }

    async fn count_messages(&self, session_id: Uuid, up_to: u32) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT 1 FROM messages WHERE session_id = $1 LIMIT $2) AS m",
        )
        .bind(session_id)
        .bind(i64::from(up_to))
        .fetch_one(&mut *self.db.acquire().await?)
        .await
        .map_err(backend)?;
        Ok(n.max(0) as u64)
    }

    async fn count_unanswered(&self, session_id: Uuid) -> Result<u64, StoreError> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT COUNT(*) FROM messages WHERE session_id = $1 AND {}",
                *AWAITING_REPLY
            )
        });
        let n: i64 = sqlx::query_scalar(&SQL)
            .bind(session_id)
            .fetch_one(&mut *self.db.acquire().await?)
            .await
            .map_err(backend)?;
        Ok(n.max(0) as u64)
    }

    async fn claim_idempotency_key(&self, claim: &KeyClaim) -> Result<ClaimOutcome, StoreError> {
        idempotency::claim(&mut *self.db.acquire().await?, claim).await
    }

    async fn complete_idempotency_key(
        &self,
        key: &IdempotencyKey,
        owner: Uuid,
        response: &StoredResponse,
    ) -> Result<bool, StoreError> {
        idempotency::complete(&mut *self.db.acquire().await?, key, owner, response).await
    }

    async fn release_idempotency_key(
        &self,
        key: &IdempotencyKey,
        owner: Uuid,
    ) -> Result<bool, StoreError> {
        idempotency::release(&mut *self.db.acquire().await?, key, owner).await
    }

    async fn get_idempotency_key(
        &self,
        key: &IdempotencyKey,
        now: DateTime<Utc>,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        idempotency::get(&mut *self.db.acquire().await?, key, now).await
    }

    async fn purge_idempotency_keys(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        idempotency::purge(&mut *self.db.acquire().await?, now, limit).await
    }

    async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&mut *self.db.acquire().await?)
        .await
        .map_err(backend)?;
        sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *self.db.acquire().await?)
            .await
            .map_err(backend)
    }

    async fn insert_webhook(&self, webhook: &Webhook) -> Result<(), StoreError> {
        webhooks::insert_webhook(&mut *self.db.acquire().await?, webhook).await
    }

    async fn list_webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        webhooks::list_webhooks(&mut *self.db.acquire().await?).await
    }

    async fn delete_webhook(&self, id: Uuid) -> Result<bool, StoreError> {
        let mut conn = self.db.acquire().await?;
        let mut tx = conn.begin().await.map_err(backend)?;
        let deleted = webhooks::delete_webhook(&mut tx, id).await?;
        commit(tx).await?;
        Ok(deleted)
    }

    async fn next_delivery_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let due = webhooks::next_due(&mut *self.db.acquire().await?).await?;
        Ok(due.map(from_ms))
    }

    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        claim: Uuid,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        webhooks::claim(
            &mut *self.db.acquire().await?,
            now,
            lease_until,
            claim,
            limit,
        )
        .await
    }

    async fn finish_delivery(
        &self,
        seq: i64,
        claim: Uuid,
        outcome: &DeliveryOutcome,
    ) -> Result<bool, StoreError> {
        webhooks::finish(&mut *self.db.acquire().await?, seq, claim, outcome).await
    }

    async fn purge_failed_deliveries(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        webhooks::purge_failed(&mut *self.db.acquire().await?, before, limit).await
    }

    async fn delivery_counts(&self) -> Result<DeliveryCounts, StoreError> {
        webhooks::counts(&mut *self.db.acquire().await?).await
    }

    fn deliveries_queued(&self) -> Arc<Notify> {
        self.queued.clone()
    }

    /// A connection (fast to fail while the database is away) and one round trip: cheap enough for a polled
    /// health check, and it also notices a database that takes no writes (a standby after a failover).
    async fn check_writable(&self) -> Result<(), StoreError> {
        self.writable.get(|| self.probe_writable()).await
    }
    async fn close(&self) {
        let tasks = self.tasks.lock().await.take();
        if let Some(tasks) = tasks {
            // Send what was published, then stop listening and release the connections.
            self.publisher.flush().await;
            tasks.publisher.abort();
            tasks.listener.stop().await;
        }
        self.db.pool.close().await;
    }
}

/// Commits `tx`, recording how long the commit took (one write per transaction on this backend).
async fn commit(tx: sqlx::Transaction<'_, Postgres>) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    tx.commit().await.map_err(backend)?;
    crate::metrics::store_commit("postgres", 1, started.elapsed());
    Ok(())
}
