//! `PostgresStore`: the backend for one or several server instances sharing a PostgreSQL database, including the
//! delivery of committed events to the subscribers of every instance (LISTEN/NOTIFY).
//!
//! Concurrency is the database's: every session write is a conditional `UPDATE ... WHERE version = $expected`
//! or takes the session row's lock first, so the writes of one session are serialised across processes and
//! each session's events get their `seq` in commit order (which is what resuming after a `Last-Event-ID`
//! needs). Commits are synchronous (the server's `synchronous_commit`, never turned off here).
//!
//! Events: a write that produces events NOTIFYs them inside its transaction, so they are delivered when, and
//! only if, it commits, in commit order; transient events from `publish` (reply chunks) go out through one
//! publisher task, in `publish` order. Each store runs one listener task that receives the channel and feeds
//! its local `EventBus`: the listener is the only source of the bus, for this instance's events as for the
//! others', so a subscriber sees every event once and in the same order on every instance. A write returns
//! once its own events have come back through the listener, so that, as with SQLite, a write has been
//! announced to this instance's subscribers when it returns.
//!
//! NOTIFY payloads must stay under 8000 bytes. A larger persisted event is announced by its seq and fetched by
//! the listeners; a larger transient event is split into parts that the listeners join again, so chunks of any
//! size arrive whole (see [`Wire`]). If the listener's connection drops, it reconnects and replays, for every
//! session subscribed here, the stored events committed meanwhile; transient events of that moment are lost.
//!
//! Outages: every query takes its connection through `conn`, which waits at most the configured acquire
//! timeout (and only `UNREACHABLE_WAIT` while the database is known to be unreachable), so that requests fail
//! fast with `StoreError::Unavailable` (503) instead of hanging. The listener reconnects with a bounded
//! exponential backoff, cut short as soon as a request reaches the database again; an outage is logged once
//! when it starts and once when it ends (`OutageLog`).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{
    PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgRow, Postgres,
};
use sqlx::{ConnectOptions, Connection, Executor, QueryBuilder, Row};
use tokio::sync::{broadcast, mpsc, oneshot, Mutex, Notify};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{
    from_ms, to_ms, AgentDeletion, EventBus, MessageWindow, Order, SessionCounts, SessionFilter,
    SessionStore, StoreError, StoreOptions,
};
use crate::domain::{Agent, EventKind, Message, Notice, Session, SessionEvent, TimeoutConfig};
use crate::outage::{Backoff, OutageLog};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The one NOTIFY channel of all instances sharing the database.
const CHANNEL: &str = "agent_sessions_events";
/// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more (default build).
const MAX_PAYLOAD: usize = 7999;
/// Escaped text per part of a split transient event; leaves room for the part's own fields.
const PART_TEXT: usize = 7800;
/// Connections for queries; the listener has its own.
const POOL_SIZE: u32 = 10;
/// Rows per query when the listener recovers events missed while its connection was down.
const RECOVERY_BATCH: u32 = 500;
/// Longest a write waits for its events to come back through the listener before returning anyway.
const LOOPBACK_WAIT: Duration = Duration::from_secs(5);
/// How long a request waits for a connection while the database is known to be unreachable: enough to
/// connect to one that is back (each request is also a probe), short enough that an outage answers 503 at
/// once rather than after the full acquire timeout.
const UNREACHABLE_WAIT: Duration = Duration::from_millis(500);
/// The listener's reconnection pacing: quick after a blip, at most every few seconds during an outage.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

pub struct PostgresStore {
    pool: PgPool,
    /// Longest a query waits for a connection (`StoreOptions::acquire_timeout`).
    acquire_timeout: Duration,
    shared: Arc<Shared>,
    /// Transient events waiting for the publisher task, in `publish` order.
    outgoing: mpsc::UnboundedSender<Outgoing>,
    /// Transient events handed to `publish` and not yet sent; lets writes skip the flush when it is zero.
    pending: Arc<AtomicU64>,
    /// The background tasks and the listener's pool, taken by `close`. Dropping the store stops both tasks too
    /// (the stop signal and the publisher's queue close with it).
    tasks: Mutex<Option<Tasks>>,
}

struct Tasks {
    stop_listener: oneshot::Sender<()>,
    listener: JoinHandle<()>,
    publisher: JoinHandle<()>,
    listener_pool: PgPool,
}

/// What the listener task and the store share.
struct Shared {
    bus: EventBus,
    /// Sessions subscribed on this instance, with what was delivered to them: after a reconnect, the listener
    /// replays each one's stored events from there, so that a dropped connection loses no persisted event.
    watched: StdMutex<HashMap<Uuid, Watch>>,
    /// Highest persisted seq the listener has delivered (of any session).
    high_water: AtomicI64,
    /// This store's name in `Ack`s.
    id: Uuid,
    next_ack: AtomicU64,
    /// Writers waiting for their events to be delivered here.
    acks: StdMutex<HashMap<u64, oneshot::Sender<()>>>,
    /// Whether the database answers, as requests and the listener last found: logs an outage once, and makes
    /// requests fail fast while it lasts.
    outage: OutageLog,
    /// Bursts of requests that found every connection of the pool busy for the whole acquire timeout (load,
    /// not an outage), logged once each.
    saturation: OutageLog,
    /// Whether the listener is connected and caught up. While it is not, writes do not wait for their events
    /// to come back through it (they are replayed to subscribers once it is back).
    listening: AtomicBool,
    /// Cuts the listener's reconnection backoff short once a request has reached the database again.
    reachable_again: Notify,
}

impl Shared {
    fn loopback(self: &Arc<Self>) -> (Ack, Loopback) {
        let n = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, back) = oneshot::channel();
        lock(&self.acks).insert(n, tx);
        let ack = Ack { store: self.id, n };
        let loopback = Loopback {
            shared: self.clone(),
            n,
            back,
        };
        (ack, loopback)
    }

    fn acknowledge(&self, ack: Option<Ack>) {
        if let Some(ack) = ack.filter(|a| a.store == self.id) {
            if let Some(tx) = lock(&self.acks).remove(&ack.n) {
                let _ = tx.send(());
            }
        }
    }

    /// Releases every waiting writer: after a reconnect (their events were replayed, or are gone with the
    /// connection) and when the listener stops.
    fn acknowledge_all(&self) {
        lock(&self.acks).clear();
    }

    /// A request reached the database after failures: wakes the listener if it is waiting to reconnect.
    fn reached_again(&self) {
        if !self.listening.load(Ordering::Acquire) {
            self.reachable_again.notify_one();
        }
    }
}

#[derive(Clone, Copy)]
struct Watch {
    /// Last seq delivered for this session; later copies (a replay racing the live feed) are dropped.
    delivered: Option<i64>,
    /// Where a replay starts while nothing was delivered: the listener's position at subscription. (An event
    /// of this session given a lower seq but committed after that, while the connection was down, would be
    /// missed; it takes a write in flight across the subscription and a disconnection at that moment.)
    floor: i64,
}

enum Outgoing {
    Event(SessionEvent),
    /// Answered once every event queued before it has been sent.
    Flush(oneshot::Sender<()>),
}

/// A NOTIFY payload. A persisted event goes whole when it fits, else as a reference the listeners fetch by
/// seq; a transient event (not in any table) that does not fit is split into parts, sent in one statement so
/// that they arrive together and in order, and joined again by the listener.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Wire {
    Event {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<i64>,
        session: Uuid,
        kind: String,
        at: i64,
        data: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ack: Option<Ack>,
    },
    Ref {
        seq: i64,
        session: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ack: Option<Ack>,
    },
    Part {
        id: Uuid,
        index: u32,
        count: u32,
        text: String,
    },
}

/// Names one write of one store, so that its listener can tell the writer when the write's events are out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Ack {
    store: Uuid,
    n: u64,
}

/// A writer waiting for its own events to come back through the listener (see `commit_announcing`).
struct Loopback {
    shared: Arc<Shared>,
    n: u64,
    back: oneshot::Receiver<()>,
}

impl Loopback {
    async fn wait(mut self) {
        if tokio::time::timeout(LOOPBACK_WAIT, &mut self.back)
            .await
            .is_err()
        {
            tracing::warn!("committed events not seen back from the database in time");
        }
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        lock(&self.shared.acks).remove(&self.n);
    }
}

/// Sorts an error into "the database cannot serve this right now" (503) and anything else (500).
fn backend(e: sqlx::Error) -> StoreError {
    if is_unavailable(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

/// Errors of a database that is away, restarting, refusing connections or writes, or out of resources, as
/// opposed to errors of the request or the data.
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P01..57P05: admin shutdown, crash shutdown, cannot connect now
            // (starting up, shutting down), database dropped, idle session timeout; 53: insufficient
            // resources (disk full, out of memory, too many connections); 25006: a read-only transaction (a
            // standby, or `default_transaction_read_only` during maintenance); 28: the role may not connect
            // (now).
            ["08", "57P", "53", "28"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "25006"
        }),
        _ => false,
    }
}

impl PostgresStore {
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

        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(acquire_timeout)
            .connect_with(options.clone())
            .await?;
        // The listener's connection lives in a pool of one, so that it reconnects even while queries hold
        // every connection of the main pool.
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(acquire_timeout)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        let mut listener = PgListener::connect_with(&listener_pool).await?;
        // LISTEN before `open` returns: every event committed after it reaches this store's subscribers.
        listener.listen(CHANNEL).await?;
        // Where replays after a reconnect start for sessions that have had no event delivered here yet: the log
        // as it stands now, not its beginning (their subscribers did not ask for the history).
        let high_water: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
            .fetch_one(&pool)
            .await?;

        let shared = Arc::new(Shared {
            bus: EventBus::default(),
            watched: StdMutex::new(HashMap::new()),
            high_water: AtomicI64::new(high_water),
            id: Uuid::new_v4(),
            next_ack: AtomicU64::new(0),
            acks: StdMutex::new(HashMap::new()),
            outage: OutageLog::new("PostgreSQL"),
            saturation: OutageLog::new("PostgreSQL connection pool"),
            listening: AtomicBool::new(true),
            reachable_again: Notify::new(),
        });
        let (stop_listener, stopped) = oneshot::channel();
        let listener = tokio::spawn(run_listener(
            listener,
            listener_pool.clone(),
            pool.clone(),
            shared.clone(),
            stopped,
        ));
        let (outgoing, queue) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicU64::new(0));
        let publisher = tokio::spawn(run_publisher(
            pool.clone(),
            shared.clone(),
            queue,
            pending.clone(),
        ));
        Ok(Self {
            pool,
            acquire_timeout,
            shared,
            outgoing,
            pending,
            tasks: Mutex::new(Some(Tasks {
                stop_listener,
                listener,
                publisher,
                listener_pool,
            })),
        })
    }

    /// A connection for one operation. Waits at most the acquire timeout for one, and only `UNREACHABLE_WAIT`
    /// while the database is known to be unreachable; either way a database that cannot be reached answers
    /// `Unavailable` quickly, never after sqlx's 30 s default.
    async fn conn(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        let unreachable = self.shared.outage.is_failing();
        let wait = if unreachable {
            UNREACHABLE_WAIT.min(self.acquire_timeout)
        } else {
            self.acquire_timeout
        };
        match tokio::time::timeout(wait, self.pool.acquire()).await {
            Ok(Ok(conn)) => {
                self.shared.outage.recovered();
                self.shared.saturation.recovered();
                if unreachable {
                    self.shared.reached_again();
                }
                Ok(conn)
            }
            Ok(Err(e)) => Err(self.acquire_failed(e)),
            Err(_) => Err(self.acquire_failed(sqlx::Error::PoolTimedOut)),
        }
    }

    /// Why no connection came: the database cannot be reached (an outage: logged once), or every connection
    /// is busy (load: nothing to log).
    fn acquire_failed(&self, e: sqlx::Error) -> StoreError {
        // The pool opens connections as needed up to its size: a timeout below it means that none could be
        // opened. (Idle connections found dead are closed first, so after an outage the pool is small.)
        let could_not_connect =
            !matches!(e, sqlx::Error::PoolTimedOut) || self.pool.size() < POOL_SIZE;
        if matches!(e, sqlx::Error::PoolTimedOut) {
            let message = if could_not_connect {
                "could not connect to the database"
            } else {
                "every database connection stayed busy"
            };
            let e = StoreError::Unavailable(message.into());
            if could_not_connect {
                self.shared.outage.failed(&e);
            } else {
                self.shared.saturation.failed(&e);
            }
            return e;
        }
        let e = backend(e);
        if matches!(e, StoreError::Unavailable(_)) {
            self.shared.outage.failed(&e);
        }
        e
    }

    /// Waits until every transient event published so far has been sent. Writes with events call it first, so
    /// that a reply's last chunks reach subscribers before the stored reply does, as they do with SQLite.
    async fn flush_transient(&self) {
        if self.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        let (done, flushed) = oneshot::channel();
        if self.outgoing.send(Outgoing::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }

    /// Commits `tx` with NOTIFYs for `events`, then waits until the listener has handed them to this store's
    /// subscribers. So, as with SQLite, a write has been announced here when it returns, and a `subscribe`
    /// made after it returns never receives its events.
    async fn commit_announcing(
        &self,
        mut tx: sqlx::Transaction<'_, Postgres>,
        events: &[SessionEvent],
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return tx.commit().await.map_err(backend);
        }
        // Checked before committing: if the listener is away now, it replays these events when it is back.
        let listening = self.shared.listening.load(Ordering::Acquire);
        let (ack, loopback) = self.shared.loopback();
        notify(&mut *tx, events, Some(ack)).await.map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        if listening {
            loopback.wait().await;
        }
        Ok(())
    }

    /// A connection for a write with `events`, once the transient events published before them are out.
    async fn conn_with_events(
        &self,
        events: &[SessionEvent],
    ) -> Result<PoolConnection<Postgres>, StoreError> {
        if !events.is_empty() {
            self.flush_transient().await;
        }
        self.conn().await
    }
}

// ---------------------------------------------------------------------------------------------------------
// Writes. Each is one transaction; the ones that produce events store them (persisted kinds get their seq) and
// NOTIFY them before committing.

/// Stores the persistent events (assigning their seq) and returns all of them for announcement.
async fn store_events(
    conn: &mut PgConnection,
    events: &[SessionEvent],
) -> Result<Vec<SessionEvent>, sqlx::Error> {
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let mut event = event.clone();
        if !event.kind.is_transient() {
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO events (session_id, kind, data, created_at) VALUES ($1, $2, $3, $4) RETURNING seq",
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

/// Queues NOTIFYs for `events`, the last one carrying `ack`; PostgreSQL delivers them when the surrounding
/// transaction commits.
async fn notify<'e, E>(
    conn: E,
    events: &[SessionEvent],
    ack: Option<Ack>,
) -> Result<(), sqlx::Error>
where
    E: Executor<'e, Database = Postgres>,
{
    let last = events.len().saturating_sub(1);
    let payloads: Vec<String> = events
        .iter()
        .enumerate()
        .flat_map(|(i, e)| encode(e, ack.filter(|_| i == last)))
        .collect();
    notify_payloads(conn, payloads).await
}

async fn notify_payloads<'e, E>(conn: E, payloads: Vec<String>) -> Result<(), sqlx::Error>
where
    E: Executor<'e, Database = Postgres>,
{
    if payloads.is_empty() {
        return Ok(());
    }
    // One round trip for all of them; unnest yields the array in order, and the notifications of one
    // transaction are queued in the order they were made.
    sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .bind(CHANNEL)
        .bind(payloads)
        .execute(conn)
        .await
        .map(drop)
}

/// The payloads that announce one event (see [`Wire`]).
fn encode(event: &SessionEvent, ack: Option<Ack>) -> Vec<String> {
    let whole = Wire::Event {
        seq: event.seq,
        session: event.session_id,
        kind: event.kind.as_str().to_owned(),
        at: to_ms(event.created_at),
        data: event.data.clone(),
        ack,
    };
    let whole = serde_json::to_string(&whole).unwrap_or_default();
    if whole.len() <= MAX_PAYLOAD {
        return vec![whole];
    }
    if let Some(seq) = event.seq {
        let reference = Wire::Ref {
            seq,
            session: event.session_id,
            ack,
        };
        return vec![serde_json::to_string(&reference).unwrap_or_default()];
    }
    let pieces = split_for_json(&whole, PART_TEXT);
    let id = Uuid::new_v4();
    let count = pieces.len() as u32;
    pieces
        .into_iter()
        .enumerate()
        .map(|(index, text)| {
            serde_json::to_string(&Wire::Part {
                id,
                index: index as u32,
                count,
                text: text.to_owned(),
            })
            .unwrap_or_default()
        })
        .collect()
}

/// Splits `s` at char boundaries into pieces whose JSON-escaped form is at most `budget` bytes.
fn split_for_json(s: &str, budget: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, c) in s.char_indices() {
        let escaped = match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        };
        if size + escaped > budget && i > start {
            pieces.push(&s[start..i]);
            (start, size) = (i, 0);
        }
        size += escaped;
    }
    if start < s.len() {
        pieces.push(&s[start..]);
    }
    pieces
}

/// `messages.reply_state` values.
mod reply_state {
    pub const NONE: i16 = 0;
    pub const PENDING: i16 = 1;
    pub const IN_PROGRESS: i16 = 2;
    pub const ANSWERED: i16 = 3;
    pub const FAILED: i16 = 4;
}

async fn insert_message(
    conn: &mut PgConnection,
    m: &Message,
    state: i16,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO messages (id, session_id, author_id, is_agent, content, metadata, attachments, created_at, \
         in_reply_to, reply_state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING seq",
    )
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
    .fetch_one(&mut *conn)
    .await
}

async fn update_session_row(
    conn: &mut PgConnection,
    s: &Session,
    expected: i64,
) -> Result<u64, sqlx::Error> {
    // The row lock this takes serialises the session's writers across processes: a second writer with the
    // same expected version waits, then re-reads the row and finds the version moved on.
    Ok(sqlx::query(
        "UPDATE sessions SET last_activity = $1, last_renewal = $2, expires_at = $3, timeout_minutes = $4, \
         auto_renew = $5, max_duration_minutes = $6, warning_threshold_minutes = $7, metadata = $8, \
         renewal_count = $9, version = $10, notice = $11, warn_at = $12 WHERE id = $13 AND version = $14",
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
    .bind(s.notice as i16)
    .bind(to_ms(s.warn_at()))
    .bind(s.id)
    .bind(expected)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Locks a session's row for the rest of the transaction; false if there is no such session. Writes to a
/// session's messages and events that do not update the row itself take this first, so that they are ordered
/// with the session's other writes (and a concurrent delete either waits for them or wins outright).
async fn lock_session(conn: &mut PgConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .is_some(),
    )
}

/// Deletes the messages and events of sessions already deleted in this transaction.
async fn delete_children(conn: &mut PgConnection, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    for sql in [
        "DELETE FROM messages WHERE session_id = ANY($1)",
        "DELETE FROM events WHERE session_id = ANY($1)",
    ] {
        sqlx::query(sql).bind(ids).execute(&mut *conn).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Rows.

const SESSION_COLUMNS: &str = "id, channel_id, agent_id, user_id, created_at, last_activity, last_renewal, \
    expires_at, timeout_minutes, auto_renew, max_duration_minutes, warning_threshold_minutes, metadata, \
    renewal_count, version, notice";

const MESSAGE_COLUMNS: &str =
    "seq, id, session_id, author_id, is_agent, content, metadata, attachments, created_at, in_reply_to";

const EVENT_COLUMNS: &str = "seq, session_id, kind, data, created_at";

fn decode(e: serde_json::Error) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}

fn session_from_row(row: &PgRow) -> Result<Session, sqlx::Error> {
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
        notice: Notice::from_i64(row.try_get::<i16, _>(15)?.into()),
    })
}

fn message_from_row(row: &PgRow) -> Result<Message, sqlx::Error> {
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

fn event_from_row(row: &PgRow) -> Result<SessionEvent, sqlx::Error> {
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

fn agent_from_row(row: &PgRow) -> Result<Agent, sqlx::Error> {
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

fn all<T>(rows: &[PgRow], f: fn(&PgRow) -> Result<T, sqlx::Error>) -> Result<Vec<T>, StoreError> {
    rows.iter()
        .map(f)
        .collect::<Result<_, _>>()
        .map_err(backend)
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

async fn events_after<'e, E>(
    conn: E,
    session_id: Uuid,
    after_seq: i64,
    limit: u32,
) -> Result<Vec<SessionEvent>, StoreError>
where
    E: Executor<'e, Database = Postgres>,
{
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
    ))
    .bind(session_id)
    .bind(after_seq)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await
    .map_err(backend)?;
    all(&rows, event_from_row)
}

#[async_trait]
impl SessionStore for PostgresStore {
    async fn insert_agent(&self, a: &Agent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO agents (id, name, backend, session_defaults, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(a.id)
        .bind(&a.name)
        .bind(serde_json::to_string(&a.backend).unwrap_or_default())
        .bind(serde_json::to_string(&a.session_defaults).unwrap_or_default())
        .bind(to_ms(a.created_at))
        .execute(&mut *self.conn().await?)
        .await
        .map(drop)
        .map_err(backend)
    }

    async fn get_agent(&self, id: Uuid) -> Result<Option<Agent>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, backend, session_defaults, created_at FROM agents WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *self.conn().await?)
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
        .fetch_all(&mut *self.conn().await?)
        .await
        .map_err(backend)?;
        all(&rows, agent_from_row)
    }

    async fn delete_agent(
        &self,
        id: Uuid,
        active_at: DateTime<Utc>,
    ) -> Result<AgentDeletion, StoreError> {
        let mut conn = self.conn().await?;
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
        delete_children(&mut tx, &sessions).await.map_err(backend)?;
        sqlx::query("DELETE FROM agents WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(AgentDeletion::Deleted)
    }

    async fn insert_session(&self, s: &Session) -> Result<bool, StoreError> {
        // Inserted only while the agent row exists, holding a key-share lock on it until commit: a concurrent
        // `delete_agent` either waits for this insert (and then sees the session) or has already removed the
        // agent (and this inserts nothing).
        let inserted = sqlx::query(
            "INSERT INTO sessions (id, channel_id, agent_id, user_id, created_at, last_activity, last_renewal, \
             expires_at, timeout_minutes, auto_renew, max_duration_minutes, warning_threshold_minutes, \
             metadata, renewal_count, version, notice, warn_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17 \
             FROM agents WHERE id = $3 FOR KEY SHARE",
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
        .bind(s.notice as i16)
        .bind(to_ms(s.warn_at()))
        .execute(&mut *self.conn().await?)
        .await
        .map_err(backend)?;
        Ok(inserted.rows_affected() > 0)
    }

    async fn get_session(&self, id: Uuid) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *self.conn().await?)
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
        events: Vec<SessionEvent>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn_with_events(&events).await?;
        let mut tx = conn.begin().await.map_err(backend)?;
        if update_session_row(&mut tx, session, expected_version)
            .await
            .map_err(backend)?
            == 0
        {
            return Ok(false);
        }
        let events = store_events(&mut tx, &events).await.map_err(backend)?;
        self.commit_announcing(tx, &events).await?;
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
        delete_children(&mut tx, &[id]).await.map_err(backend)?;
        let events = if n > 0 { events } else { Vec::new() };
        self.commit_announcing(tx, &events).await?;
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
        let rows = q
            .build()
            .fetch_all(&mut *self.conn().await?)
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
        let now = to_ms(now);
        let mut q = QueryBuilder::new("SELECT COUNT(*), COUNT(*) FILTER (WHERE expires_at > ");
        q.push_bind(now)
            .push("), COUNT(*) FILTER (WHERE expires_at > ")
            .push_bind(now)
            .push(" AND warn_at <= ")
            .push_bind(now)
            .push(") FROM sessions WHERE expires_at > ")
            .push_bind(to_ms(retained_after));
        push_filter(&mut q, filter);
        let row = q
            .build()
            .fetch_one(&mut *self.conn().await?)
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
        let mut conn = self.conn().await?;
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
        delete_children(&mut tx, &ids).await.map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(ids.len() as u64)
    }

    async fn sessions_due_notice(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Session>, StoreError> {
        // A plain read: the caller's updates are conditional on the version read here, so when two instances
        // announce the same session, one update wins and the other changes (and announces) nothing.
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE notice < 2 AND warn_at <= $1 \
             AND (notice = 0 OR expires_at <= $1) ORDER BY warn_at, id LIMIT $2"
        ))
        .bind(to_ms(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *self.conn().await?)
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
        let mut conn = self.conn_with_events(&events).await?;
        let mut tx = conn.begin().await.map_err(backend)?;
        if update_session_row(&mut tx, session, expected_version)
            .await
            .map_err(backend)?
            == 0
        {
            return Ok(None);
        }
        let seq = insert_message(&mut tx, message, reply_state::PENDING)
            .await
            .map_err(backend)?;
        let events = store_events(&mut tx, &events).await.map_err(backend)?;
        self.commit_announcing(tx, &events).await?;
        Ok(Some(seq))
    }

    async fn insert_reply(
        &self,
        message: &Message,
        events: Vec<SessionEvent>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn_with_events(&events).await?;
        let mut tx = conn.begin().await.map_err(backend)?;
        if !lock_session(&mut tx, message.session_id)
            .await
            .map_err(backend)?
        {
            return Ok(false);
        }
        insert_message(&mut tx, message, reply_state::NONE)
            .await
            .map_err(backend)?;
        let events = store_events(&mut tx, &events).await.map_err(backend)?;
        self.commit_announcing(tx, &events).await?;
        Ok(true)
    }

    async fn claim_reply(
        &self,
        session_id: Uuid,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<Option<Message>, StoreError> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await.map_err(backend)?;
        // The session's row lock makes check-then-claim atomic across instances: claims, finishes and new
        // messages of one session all take it, so two workers never see the session idle at the same time.
        if !lock_session(&mut tx, session_id).await.map_err(backend)? {
            return Ok(None);
        }
        let busy = sqlx::query(
            "SELECT 1 FROM messages WHERE session_id = $1 AND reply_state = $2 AND claimed_at > $3 LIMIT 1",
        )
        .bind(session_id)
        .bind(reply_state::IN_PROGRESS)
        .bind(to_ms(stale_before))
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        if busy.is_some() {
            return Ok(None);
        }
        let row = sqlx::query(&format!(
            "UPDATE messages SET reply_state = $2, claimed_at = $3 WHERE seq = (SELECT seq FROM messages \
             WHERE session_id = $1 AND (reply_state = $4 OR (reply_state = $2 AND claimed_at <= $5)) \
             ORDER BY seq LIMIT 1) RETURNING {MESSAGE_COLUMNS}"
        ))
        .bind(session_id)
        .bind(reply_state::IN_PROGRESS)
        .bind(to_ms(now))
        .bind(reply_state::PENDING)
        .bind(to_ms(stale_before))
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let message = row
            .as_ref()
            .map(message_from_row)
            .transpose()
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
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
        if !lock_session(&mut tx, session_id).await.map_err(backend)? {
            return Ok(false);
        }
        let state = if reply.is_some() {
            reply_state::ANSWERED
        } else {
            reply_state::FAILED
        };
        let ours =
            sqlx::query("UPDATE messages SET reply_state = $2 WHERE id = $1 AND reply_state = $3")
                .bind(user_message_id)
                .bind(state)
                .bind(reply_state::IN_PROGRESS)
                .execute(&mut *tx)
                .await
                .map_err(backend)?
                .rows_affected();
        if ours == 0 {
            return Ok(false);
        }
        if let Some(m) = reply {
            insert_message(&mut tx, m, reply_state::NONE)
                .await
                .map_err(backend)?;
        }
        let events = store_events(&mut tx, &events).await.map_err(backend)?;
        self.commit_announcing(tx, &events).await?;
        Ok(true)
    }

    async fn sessions_with_stalled_replies(
        &self,
        stale_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        sqlx::query_scalar(
            "SELECT DISTINCT session_id FROM messages WHERE reply_state IN (1, 2) \
             AND ((reply_state = 1 AND created_at <= $1) OR (reply_state = 2 AND claimed_at <= $1)) LIMIT $2",
        )
        .bind(to_ms(stale_before))
        .bind(i64::from(limit))
        .fetch_all(&mut *self.conn().await?)
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
        let direction = match order {
            Order::OldestFirst => "ASC",
            Order::NewestFirst => "DESC",
        };
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
        let rows = q
            .build()
            .fetch_all(&mut *self.conn().await?)
            .await
            .map_err(backend)?;
        all(&rows, message_from_row)
    }

    async fn recent_messages(
        &self,
        session_id: Uuid,
        before_seq: i64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
        ))
        .bind(session_id)
        .bind(before_seq)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.conn().await?)
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
        events_after(&mut *self.conn().await?, session_id, after_seq, limit).await
    }

    fn subscribe(&self, session_id: Uuid) -> broadcast::Receiver<SessionEvent> {
        let receiver = self.shared.bus.subscribe(session_id);
        let floor = self.shared.high_water.load(Ordering::Acquire);
        lock(&self.shared.watched)
            .entry(session_id)
            .or_insert(Watch {
                delivered: None,
                floor,
            });
        receiver
    }

    /// Sends through the database, not to the local bus: the listener delivers it here as everywhere else.
    /// A chunk too large for one NOTIFY is split into parts and joined again by the listeners, so subscribers
    /// get it whole. Sent by one task in `publish` order; if the database cannot be reached it is dropped
    /// (transient events are live only, and nothing waits for them).
    fn publish(&self, event: &SessionEvent) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self.outgoing.send(Outgoing::Event(event.clone())).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
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
        .fetch_one(&mut *self.conn().await?)
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
        .fetch_one(&mut *self.conn().await?)
        .await
        .map_err(backend)?;
        Ok(n.max(0) as u64)
    }

    async fn count_unanswered(&self, session_id: Uuid) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM messages WHERE session_id = $1 AND reply_state IN (1, 2)",
        )
        .bind(session_id)
        .fetch_one(&mut *self.conn().await?)
        .await
        .map_err(backend)?;
        Ok(n.max(0) as u64)
    }

    async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&mut *self.conn().await?)
        .await
        .map_err(backend)?;
        sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *self.conn().await?)
            .await
            .map_err(backend)
    }

    /// A connection (fast to fail while the database is away) and one round trip: cheap enough for a polled
    /// health check, and it also notices a database that takes no writes (a standby after a failover).
    async fn check_writable(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let read_only = tokio::time::timeout(
            self.acquire_timeout,
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

    async fn close(&self) {
        let tasks = self.tasks.lock().await.take();
        if let Some(tasks) = tasks {
            // Send what was published, then stop listening and release the connections.
            self.flush_transient().await;
            tasks.publisher.abort();
            let _ = tasks.stop_listener.send(());
            let _ = tasks.listener.await;
            tasks.listener_pool.close().await;
        }
        self.pool.close().await;
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------------------
// Background tasks.

/// Sends transient events in the order they were published, batching whatever is queued into one statement.
/// While the database is away they are dropped (they are live only), each batch after at most the pool's
/// acquire timeout; the outage is logged once, by `Shared::outage`.
async fn run_publisher(
    pool: PgPool,
    shared: Arc<Shared>,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    pending: Arc<AtomicU64>,
) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, 256).await > 0 {
        let mut payloads = Vec::new();
        let mut flushes = Vec::new();
        let mut sent = 0;
        for item in batch.drain(..) {
            match item {
                Outgoing::Event(event) => {
                    payloads.extend(encode(&event, None));
                    sent += 1;
                }
                Outgoing::Flush(done) => flushes.push(done),
            }
        }
        if let Err(e) = notify_payloads(&pool, payloads).await {
            if is_unavailable(&e) {
                shared.outage.failed(&e);
                tracing::debug!(error = %e, dropped = sent, "could not send transient events");
            } else {
                tracing::warn!(error = %e, dropped = sent, "could not send transient events");
            }
        }
        pending.fetch_sub(sent, Ordering::AcqRel);
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Receives the channel and feeds the local bus, until `stop` fires (or the store is dropped). When the
/// connection is lost it starts over with a new one (backing off while the database is away), and replays
/// what the subscribers here missed meanwhile before going on.
async fn run_listener(
    mut listener: PgListener,
    listener_pool: PgPool,
    pool: PgPool,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    // However the listener ends, no writer is left waiting for it.
    struct ReleaseAll(Arc<Shared>);
    impl Drop for ReleaseAll {
        fn drop(&mut self) {
            self.0.acknowledge_all();
        }
    }
    let _release = ReleaseAll(shared.clone());
    let mut parts: HashMap<Uuid, Vec<String>> = HashMap::new();
    loop {
        let lost = loop {
            let received = tokio::select! {
                r = listener.try_recv() => r,
                _ = &mut stop => return,
            };
            match received {
                Ok(Some(notification)) => {
                    match serde_json::from_str::<Wire>(notification.payload()) {
                        Ok(wire) => {
                            if !receive(wire, &pool, &shared, &mut parts).await {
                                break "a notified event could not be fetched".to_string();
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "undecodable event notification"),
                    }
                }
                // The connection was lost (and maybe re-established): notifications in between are gone.
                Ok(None) => break "the event listener's connection was lost".to_string(),
                Err(e) => break format!("the event listener's connection failed: {e}"),
            }
        };
        // Writers waiting for their events are released now: they are replayed once the listener is back.
        shared.listening.store(false, Ordering::Release);
        shared.acknowledge_all();
        shared.outage.failed(&lost);
        parts.clear();
        // A new listener rather than sqlx's reconnection: a connection that failed with an error (such as
        // the server's "terminating connection due to administrator command") stays in a PgListener.
        drop(listener);
        let mut backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_MAX);
        listener = loop {
            match relisten(&listener_pool, &pool, &shared).await {
                Ok(listener) => break listener,
                Err(e) => tracing::debug!(error = %e, "event listener: still no database"),
            }
            // Reconnection pacing while the database is away (a production wait, not a test's).
            tokio::select! {
                _ = tokio::time::sleep(backoff.failed()) => {}
                _ = shared.reachable_again.notified() => {}
                _ = &mut stop => return,
            }
        };
        shared.listening.store(true, Ordering::Release);
        shared.acknowledge_all();
        shared.outage.recovered();
    }
}

/// A new listener, listening, with the events committed while there was none delivered.
async fn relisten(
    listener_pool: &PgPool,
    pool: &PgPool,
    shared: &Shared,
) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect_with(listener_pool)
        .await
        .map_err(backend)?;
    // Listening before reading the log, so that an event committed in between is either in the log or
    // notified (and then dropped as a duplicate).
    listener.listen(CHANNEL).await.map_err(backend)?;
    recover_missed(pool, shared).await?;
    Ok(listener)
}

/// Handles one notification; false if an event could not be delivered and a replay is needed.
async fn receive(
    wire: Wire,
    pool: &PgPool,
    shared: &Shared,
    parts: &mut HashMap<Uuid, Vec<String>>,
) -> bool {
    match wire {
        Wire::Event {
            seq,
            session,
            kind,
            at,
            data,
            ack,
        } => {
            match EventKind::parse(&kind) {
                Some(kind) => deliver(
                    shared,
                    SessionEvent {
                        seq,
                        session_id: session,
                        kind,
                        data,
                        created_at: from_ms(at),
                    },
                ),
                None => tracing::warn!(kind, "notification of an unknown event kind"),
            }
            shared.acknowledge(ack);
        }
        Wire::Ref { seq, session, ack } => {
            let _release = Released(shared, ack);
            // Fetched here, before the next notification is handled, to keep the order.
            let row = sqlx::query(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE seq = $1"
            ))
            .bind(seq)
            .fetch_optional(pool)
            .await;
            match row.map(|r| r.as_ref().map(event_from_row).transpose()) {
                Ok(Ok(Some(event))) => deliver(shared, event),
                // Deleted with its session since: nobody can be waiting for it.
                Ok(Ok(None)) => {}
                Ok(Err(e)) | Err(e) => {
                    tracing::warn!(%session, seq, error = %e, "could not fetch a notified event");
                    // The replay after a reconnect starts at the last event delivered, so it brings this one.
                    return false;
                }
            }
        }
        Wire::Part {
            id,
            index,
            count,
            text,
        } => {
            let pieces = parts.entry(id).or_default();
            if index as usize != pieces.len() {
                // Parts of one event are sent in one statement and arrive in order; anything else is noise.
                parts.remove(&id);
                return true;
            }
            pieces.push(text);
            if pieces.len() == count as usize {
                let whole = parts.remove(&id).unwrap_or_default().concat();
                match serde_json::from_str::<Wire>(&whole) {
                    Ok(wire @ Wire::Event { .. }) => {
                        return Box::pin(receive(wire, pool, shared, parts)).await
                    }
                    _ => tracing::warn!("undecodable split event notification"),
                }
            }
        }
    }
    true
}

/// Acknowledges when dropped, so that every way out of handling a notification releases its writer.
struct Released<'a>(&'a Shared, Option<Ack>);

impl Drop for Released<'_> {
    fn drop(&mut self) {
        self.0.acknowledge(self.1);
    }
}

/// Hands one event to the local subscribers, once.
fn deliver(shared: &Shared, event: SessionEvent) {
    {
        let mut watched = lock(&shared.watched);
        if let Some(seq) = event.seq {
            shared.high_water.fetch_max(seq, Ordering::AcqRel);
            if let Some(watch) = watched.get_mut(&event.session_id) {
                if watch.delivered.is_some_and(|d| seq <= d) {
                    return;
                }
                watch.delivered = Some(seq);
            }
        }
        if event.kind.ends_stream() {
            // The session has nothing more to say, so nothing more to replay.
            watched.remove(&event.session_id);
        }
    }
    shared.bus.publish(&event);
}

/// After the listener's connection came back: delivers, for every session subscribed here, the stored events
/// committed while it was away. Transient events of that time (chunks) are lost: they are live only.
async fn recover_missed(pool: &PgPool, shared: &Shared) -> Result<(), StoreError> {
    let sessions: Vec<(Uuid, Watch)> = {
        let mut watched = lock(&shared.watched);
        // Sessions nobody here listens to any more have nobody to replay to (a later subscriber catches up
        // from its own Last-Event-ID): forgetting them keeps a recovery to one query per open stream.
        watched.retain(|id, _| shared.bus.has_subscribers(*id));
        watched.iter().map(|(id, w)| (*id, *w)).collect()
    };
    for (session_id, watch) in sessions {
        let mut after = watch.delivered.unwrap_or(watch.floor);
        loop {
            let events = events_after(pool, session_id, after, RECOVERY_BATCH).await?;
            let done = events.len() < RECOVERY_BATCH as usize;
            for event in events {
                after = event.seq.unwrap_or(after);
                deliver(shared, event);
            }
            if done {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_unavailable_and_query_errors_are_not() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(refused),
        ] {
            assert!(matches!(backend(e), StoreError::Unavailable(_)));
        }
        for e in [
            sqlx::Error::RowNotFound,
            sqlx::Error::ColumnNotFound("x".into()),
            sqlx::Error::Protocol("unexpected message".into()),
        ] {
            assert!(matches!(backend(e), StoreError::Backend(_)));
        }
    }

    fn awkward(len: usize) -> String {
        "a\"b\\c\nd\u{1}e€f🙂g\u{7f}"
            .chars()
            .cycle()
            .take(len)
            .collect()
    }

    #[test]
    fn split_pieces_fit_once_escaped_and_rejoin() {
        for len in [0, 1, 100, 7_999, 8_000, 50_000] {
            let text = awkward(len);
            let pieces = split_for_json(&text, PART_TEXT);
            assert_eq!(pieces.concat(), text);
            for piece in &pieces {
                let escaped = serde_json::to_string(piece).unwrap();
                assert!(escaped.len() - 2 <= PART_TEXT, "{} bytes", escaped.len());
            }
        }
    }

    #[test]
    fn every_payload_fits_a_notify() {
        let session = Uuid::new_v4();
        let ack = Some(Ack {
            store: Uuid::new_v4(),
            n: u64::MAX,
        });
        for len in [10, 7_900, 8_000, 100_000] {
            let chunk =
                SessionEvent::chunk(session, session, session, &awkward(len), 3, from_ms(0));
            let payloads = encode(&chunk, ack);
            assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
            // Joined again, the parts are the event with its ack.
            let whole = if payloads.len() == 1 {
                payloads[0].clone()
            } else {
                payloads
                    .iter()
                    .map(|p| match serde_json::from_str::<Wire>(p).unwrap() {
                        Wire::Part { text, .. } => text,
                        other => panic!("not a part: {other:?}"),
                    })
                    .collect()
            };
            match serde_json::from_str::<Wire>(&whole).unwrap() {
                Wire::Event { data, ack: a, .. } => {
                    assert_eq!(data, chunk.data);
                    assert_eq!(a, ack);
                }
                other => panic!("not an event: {other:?}"),
            }

            let mut stored = chunk.clone();
            stored.kind = EventKind::Message;
            stored.seq = Some(42);
            let payloads = encode(&stored, ack);
            assert_eq!(
                payloads.len(),
                1,
                "a stored event is fetched by seq when large"
            );
            assert!(payloads[0].len() <= MAX_PAYLOAD);
        }
    }
}
