//! Persistence: the `SessionStore` trait every backend implements (failing with the domain's `StoreError`),
//! and `open(url)`, which picks the backend from the URL scheme. Stores only persist and deliver committed
//! events: no clock, no rules.
//!
//! The backends, `sqlite/` (the embedded default) and `postgres/` (several instances on one database), share
//! what the tables are: `schema.rs` (column lists, reply states, JSON columns, event encoding, the SQL built
//! from the lists) and `rows.rs` (records decoded from rows by column name, and bound to statements), so that
//! a column is added in one place for both. `bus.rs` fans committed events out to this process's
//! subscribers.
//!
//! Outbound webhooks use the store as their queue (an outbox): every write that commits an event webhooks hear
//! of (`OutboundEvent::of`, and `session.created` on `insert_session`) queues a delivery per matching webhook in
//! the same transaction, so that an event is queued exactly when it is committed, whatever happens next.

mod bus;
mod postgres;
mod reused;
mod rows;
mod schema;
mod sqlite;
/// The SQLite store's test fixtures, for the unit tests of the layers above.
#[cfg(test)]
pub(crate) use sqlite::fixtures;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::domain::{
    Agent, ClaimOutcome, Delivery, DeliveryOutcome, IdempotencyKey, IdempotencyRecord, KeyClaim,
    Message, Session, SessionEvent, StoredResponse, Webhook,
};

pub use crate::domain::StoreError;
pub use bus::{EventBus, LiveEvents};
pub use postgres::PostgresStore;
pub use reused::Reused;
pub use sqlite::SqliteStore;

/// The times of a reply claim made with a recorded message (see `SessionStore::claim_reply`).
#[derive(Debug, Clone, Copy)]
pub struct ClaimAt {
    pub now: DateTime<Utc>,
    pub stale_before: DateTime<Utc>,
}

/// A recorded user message: its `seq`, and the message claimed with it (see `SessionStore::record_message`).
#[derive(Debug)]
pub struct Recorded {
    pub seq: i64,
    pub claimed: Option<Message>,
}

/// What `delete_agent` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentDeletion {
    Deleted,
    NotFound,
    /// Nothing deleted: the agent has this many active sessions.
    InUse(u64),
}

/// Which sessions a listing or a count looks at.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub agent_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
}

/// Session counts for health and listing stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounts {
    /// Stored sessions not yet past retention.
    pub total: u64,
    /// Of those, not yet expired.
    pub active: u64,
    /// Of the active ones, inside their own warning threshold.
    pub expiring_soon: u64,
}

/// A window of a session's messages: `created_at` strictly between the bounds (epoch milliseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageWindow {
    pub after_ms: Option<i64>,
    pub before_ms: Option<i64>,
}

/// Queued webhook deliveries, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    /// Not delivered yet, and still to be tried.
    pub pending: u64,
    /// Given up on (kept until purged).
    pub failed: u64,
}

/// Which end of a window a listing starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Oldest first: `(created_at, seq)` ascending.
    OldestFirst,
    /// Newest first: `(created_at, seq)` descending.
    NewestFirst,
}

/// A session's stored events after some seq, as a subscriber resuming from there reads them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventReplay {
    /// Oldest first.
    pub events: Vec<SessionEvent>,
    /// The highest seq pruned from the session's log (0: none), read in the same snapshot as `events`: a
    /// subscriber whose last seq is below it has missed events. Pruning always keeps the session's newest
    /// events, so whenever a subscriber has missed some, `events` is not empty; with no events it is 0.
    pub pruned_through: i64,
}

impl EventReplay {
    /// From rows of events each read with the session's `events_pruned_through`.
    pub(crate) fn from_rows(rows: Vec<(SessionEvent, i64)>) -> Self {
        let pruned_through = rows.first().map_or(0, |(_, pruned)| *pruned);
        Self {
            events: rows.into_iter().map(|(event, _)| event).collect(),
            pruned_through,
        }
    }
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    async fn insert_agent(&self, agent: &Agent) -> Result<(), StoreError>;
    async fn get_agent(&self, id: Uuid) -> Result<Option<Agent>, StoreError>;
    /// All agents, oldest first.
    async fn list_agents(&self) -> Result<Vec<Agent>, StoreError>;
    /// Deletes the agent with its sessions, unless one of them is still active (`expires_at > active_at`): then
    /// nothing changes. Atomic against concurrent `insert_session` for the agent: a session is either refused or
    /// seen here.
    async fn delete_agent(
        &self,
        id: Uuid,
        active_at: DateTime<Utc>,
    ) -> Result<AgentDeletion, StoreError>;

    /// Stores a new session, only if its agent exists (checked atomically with the insert); false if it does not.
    /// Queues its `session.created` deliveries in the same transaction.
    async fn insert_session(&self, session: &Session) -> Result<bool, StoreError>;
    async fn get_session(&self, id: Uuid) -> Result<Option<Session>, StoreError>;
    /// The session whose channel is `channel_id` (Socket.IO clients name a session by its channel).
    async fn session_by_channel(&self, channel_id: Uuid) -> Result<Option<Session>, StoreError>;
    /// Stores `session` only if the stored row is still at `expected_version` (optimistic concurrency, safe
    /// across processes), with `events` in the same transaction. False when someone else updated or deleted
    /// it first (then nothing is written).
    async fn update_session(
        &self,
        session: &Session,
        expected_version: i64,
        events: Vec<SessionEvent>,
    ) -> Result<bool, StoreError>;
    /// `update_session` for a heartbeat. A store may acknowledge it once the commit survives a crash of this
    /// process, without waiting for it to reach the disk (SQLite: a commit without `fsync`, in WAL mode; the next
    /// durable commit or checkpoint takes it to the disk), so only an operating-system crash or a power loss in
    /// between loses it, and then the session keeps its previous expiry. By default, a durable update.
    async fn record_heartbeat(
        &self,
        session: &Session,
        expected_version: i64,
        events: Vec<SessionEvent>,
    ) -> Result<bool, StoreError> {
        self.update_session(session, expected_version, events).await
    }
    /// Deletes a session with its messages and events, then announces `events` (transient) to subscribers.
    async fn delete_session(&self, id: Uuid, events: Vec<SessionEvent>)
        -> Result<bool, StoreError>;
    /// Sessions with `expires_at > active_at`, newest first, paginated.
    async fn list_active_sessions(
        &self,
        filter: &SessionFilter,
        active_at: DateTime<Utc>,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<Session>, StoreError>;
    /// Counts at `now`, ignoring sessions whose `expires_at <= retained_after` (past retention).
    async fn count_sessions(
        &self,
        filter: &SessionFilter,
        now: DateTime<Utc>,
        retained_after: DateTime<Utc>,
    ) -> Result<SessionCounts, StoreError>;
    /// Deletes up to `limit` sessions with `expires_at <= cutoff`, with their messages and events; returns how
    /// many. Callers loop, so that no single transaction holds the database for long.
    async fn purge_sessions(&self, cutoff: DateTime<Utc>, limit: u32) -> Result<u64, StoreError>;
    /// Up to `limit` sessions that may owe an announcement at `now` (warning or expiry not yet announced and
    /// `warn_at <= now`).
    async fn sessions_due_notice(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Session>, StoreError>;

    /// A user message: updates the session (conditional on `expected_version`, as `update_session`) and inserts
    /// the message, pending a reply, with `events`, atomically; with `claim`, then takes the session's next
    /// message to answer in the same transaction (as `claim_reply` would right after it), which saves the
    /// replying worker a write of its own. Returns the message's `seq` and what was claimed, or None if the
    /// session changed first.
    async fn record_message(
        &self,
        session: &Session,
        expected_version: i64,
        message: &Message,
        events: Vec<SessionEvent>,
        claim: Option<ClaimAt>,
    ) -> Result<Option<Recorded>, StoreError>;
    /// A message stored as is (no reply expected), with its events, only if the session still exists. Returns
    /// whether it was.
    async fn insert_reply(
        &self,
        message: &Message,
        events: Vec<SessionEvent>,
    ) -> Result<bool, StoreError>;
    /// Takes the next message of the session to answer: the oldest that is pending, or in progress under a claim
    /// made at or before `stale_before` (its worker died). Returns None while another claim on the session is
    /// live, so that one session's messages are answered one at a time, in order, across all instances.
    async fn claim_reply(
        &self,
        session_id: Uuid,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<Option<Message>, StoreError>;
    /// Ends the claim on `user_message_id`: answered with `reply` (stored if the session still exists), or
    /// failed (`None`); with `events`. Returns false, storing nothing, if the claim was no longer ours.
    async fn finish_reply(
        &self,
        user_message_id: Uuid,
        reply: Option<&Message>,
        events: Vec<SessionEvent>,
    ) -> Result<bool, StoreError>;
    /// Sessions with a message pending since at or before `stale_before`, or claimed then and never finished.
    async fn sessions_with_stalled_replies(
        &self,
        stale_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError>;
    /// Up to `limit` messages of a session inside `window`, in `order`.
    async fn list_messages(
        &self,
        session_id: Uuid,
        window: MessageWindow,
        order: Order,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError>;
    /// The `limit` most recent messages stored before `before_seq`, oldest first (an agent's context).
    async fn recent_messages(
        &self,
        session_id: Uuid,
        before_seq: i64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError>;

    /// Persisted events of a session with `seq > after_seq`, oldest first, at most `limit`, with how far the
    /// session's log has been pruned, read together.
    async fn replay_events(
        &self,
        session_id: Uuid,
        after_seq: i64,
        limit: u32,
    ) -> Result<EventReplay, StoreError>;
    /// Persisted events of a session with `seq > after_seq`, oldest first, at most `limit`.
    async fn events_after(
        &self,
        session_id: Uuid,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<SessionEvent>, StoreError> {
        Ok(self
            .replay_events(session_id, after_seq, limit)
            .await?
            .events)
    }
    /// Committed events of one session from now on, in commit order.
    fn subscribe(&self, session_id: Uuid) -> LiveEvents;
    /// Delivers a transient event (a reply chunk) to subscribers without storing it.
    fn publish(&self, event: &SessionEvent);

    /// The sessions of `user_id` still active at `now` (`expires_at > now`).
    async fn count_active_sessions_of_user(
        &self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// How many messages the session holds, counting no further than `up_to` (so that the count stays cheap
    /// for long histories).
    async fn count_messages(&self, session_id: Uuid, up_to: u32) -> Result<u64, StoreError>;

    /// How many of the session's user messages still wait for a reply (pending or being answered).
    async fn count_unanswered(&self, session_id: Uuid) -> Result<u64, StoreError>;

    /// Claims an idempotency key for a request, atomically across instances: stores it in flight unless a live
    /// record holds it. A record that has expired (`expires_at <= claim.now`), or an in-flight one of the same
    /// fingerprint claimed at or before `claim.stale_before` (its request died with its instance), is taken
    /// over. Otherwise returns the record that holds the key.
    async fn claim_idempotency_key(&self, claim: &KeyClaim) -> Result<ClaimOutcome, StoreError>;
    /// Ends `owner`'s claim on `key` with the response to replay. False, changing nothing, if the claim is no
    /// longer `owner`'s (it was taken over, or released).
    async fn complete_idempotency_key(
        &self,
        key: &IdempotencyKey,
        owner: Uuid,
        response: &StoredResponse,
    ) -> Result<bool, StoreError>;
    /// Drops `owner`'s in-flight claim on `key` (its request failed), so that a retry does the work. False if
    /// the claim is no longer `owner`'s.
    async fn release_idempotency_key(
        &self,
        key: &IdempotencyKey,
        owner: Uuid,
    ) -> Result<bool, StoreError>;
    /// The record of `key`, unless there is none or it has expired at `now`.
    async fn get_idempotency_key(
        &self,
        key: &IdempotencyKey,
        now: DateTime<Utc>,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
    /// Deletes up to `limit` idempotency records with `expires_at <= now`; returns how many. Callers loop.
    async fn purge_idempotency_keys(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError>;

    /// The stored value of the setting `name`; when there is none yet, stores `value` first. Instances racing
    /// on an empty database all get the one value that won.
    async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String, StoreError>;

    /// Registers a webhook: from the next commit on, events it wants are queued for it.
    async fn insert_webhook(&self, webhook: &Webhook) -> Result<(), StoreError>;
    /// Every webhook, oldest first.
    async fn list_webhooks(&self) -> Result<Vec<Webhook>, StoreError>;
    /// Deletes a webhook with every delivery queued or failed for it; false if there was no such webhook.
    async fn delete_webhook(&self, id: Uuid) -> Result<bool, StoreError>;
    /// The earliest time at which a queued delivery may be claimed (the head of its webhook's and session's
    /// queue, due and not leased); None when nothing is pending. Cheap enough to poll.
    async fn next_delivery_at(&self) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// Claims up to `limit` deliveries that may go at `now`: each the oldest pending delivery of its webhook and
    /// session (so one session's events reach a webhook in commit order, one at a time), due, and not leased.
    /// They are leased to `claim` until `lease_until` and their attempt is counted. Across instances, a delivery
    /// is held by one claim at a time; once its lease has passed without an outcome, it may be claimed again.
    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        claim: Uuid,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError>;
    /// Records how an attempt of the delivery `seq` ended, only while `claim` still holds it (false otherwise:
    /// its lease passed and another claim took it, or its webhook was deleted). `Delivered` removes it from
    /// the queue.
    async fn finish_delivery(
        &self,
        seq: i64,
        claim: Uuid,
        outcome: &DeliveryOutcome,
    ) -> Result<bool, StoreError>;
    /// Deletes up to `limit` failed deliveries of events committed at or before `before`; returns how many.
    async fn purge_failed_deliveries(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError>;
    /// How many deliveries are pending and failed.
    async fn delivery_counts(&self) -> Result<DeliveryCounts, StoreError>;
    /// Notified in this process after each commit that queued deliveries, so that a dispatcher here starts at
    /// once instead of at its next poll (other instances find them by polling).
    fn deliveries_queued(&self) -> Arc<Notify>;

    /// Whether the store can take writes right now; the error says why not (the health route reports it, as
    /// 503). Load balancers poll it: it must stay cheap, and answer quickly when the database is away.
    async fn check_writable(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Flushes pending writes and releases the database.
    async fn close(&self);
}

/// How a store deals with a database that is slow to answer or away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Longest a request waits for a database connection (PostgreSQL) before it fails with `Unavailable`
    /// (503). Short, so that while the database is down requests fail fast instead of hanging: sqlx's own
    /// default is 30 s.
    pub acquire_timeout: Duration,
    /// How many of its newest events a session's log keeps (0: all); older ones are deleted as new ones are
    /// stored (in batches, see `prune_due`), and a subscriber resuming from a deleted one is told it missed
    /// some. Every event is also deleted with its session.
    pub events_per_session: u32,
}

/// Whether a write that stored an event under `seq` prunes its session's log down to `keep` events (0: never).
/// Finding what to prune walks up to `keep` index entries, too much for every write of a long session: so it
/// runs when `seq` is a multiple of an eighth of `keep`, and a log holds about `keep` plus an eighth at most
/// (on average; exactly `keep` for caps under 16). What was pruned is recorded exactly either way.
pub(crate) fn prune_due(seq: i64, keep: u32) -> bool {
    keep > 0 && seq % i64::from((keep / 8).max(1)) == 0
}

/// `--database-acquire-timeout-seconds`' default.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// `--events-kept-per-session`' default: hundreds of exchanges (each stores about three events), far more than
/// a client that was briefly away needs, while one long-lived session cannot grow its log without bound.
pub const DEFAULT_EVENTS_PER_SESSION: u32 = 1000;

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            events_per_session: DEFAULT_EVENTS_PER_SESSION,
        }
    }
}

/// Opens the store a `DATABASE_URL` names, with the default options.
pub async fn open(url: &str) -> anyhow::Result<Arc<dyn SessionStore>> {
    open_with(url, &StoreOptions::default()).await
}

/// Opens the store a `DATABASE_URL` names: `sqlite:PATH` or `postgres://…` (`postgresql://…`).
pub async fn open_with(url: &str, options: &StoreOptions) -> anyhow::Result<Arc<dyn SessionStore>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open_with(url, options).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::open_with(url, options).await?))
    } else {
        anyhow::bail!("unsupported database URL '{url}': expected sqlite:PATH or postgres://USER:PASSWORD@HOST/DB")
    }
}

pub(crate) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The time as a read of a row gives it back (`from_ms(to_ms(t))`): the time itself when it is a whole millisecond
/// already, as the clock reads them (no leap second, which the store's milliseconds cannot hold), without the
/// calendar round trip.
pub(crate) fn as_stored(t: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = t.timestamp_subsec_nanos();
    if nanos.is_multiple_of(1_000_000) && nanos < 1_000_000_000 {
        t
    } else {
        from_ms(to_ms(t))
    }
}

#[cfg(test)]
mod tests {
    use super::{as_stored, from_ms, prune_due, to_ms};
    use chrono::DateTime;

    /// A time already in whole milliseconds is kept as it is; any other goes through the store's milliseconds:
    /// both give what a read of the row gives back.
    #[test]
    fn times_are_kept_as_the_store_gives_them_back() {
        for (secs, nanos) in [
            (1_735_689_600, 0),
            (1_735_689_600, 123_000_000),
            (1_735_689_600, 123_456_789),
            (1_735_689_600, 999_999_999),
            (1_735_689_659, 1_000_000_000),
            (1_735_689_659, 1_500_000_000),
            (-1, 1_000_000),
        ] {
            let t = DateTime::from_timestamp(secs, nanos).unwrap();
            assert_eq!(as_stored(t), from_ms(to_ms(t)), "{secs} {nanos}");
        }
    }

    #[test]
    fn small_logs_are_pruned_on_every_write_large_ones_every_eighth_of_their_cap() {
        assert!((1..20).all(|seq| prune_due(seq, 3) && prune_due(seq, 15)));
        assert!((1..2000).all(|seq| !prune_due(seq, 0)));
        let due: Vec<i64> = (1..=400).filter(|&seq| prune_due(seq, 1000)).collect();
        assert_eq!(due, [125, 250, 375]);
    }
}
