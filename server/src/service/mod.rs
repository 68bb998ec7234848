//! `SessionService`: the one place that reads the clock and calls the store. Handlers call it; it applies the
//! domain's pure transitions and persists them with optimistic concurrency.
//!
//! Submodules: `messages` (send and history), `replies` (per-session reply workers), `events` (the real-time
//! stream and expiry notices), `health` (the health route's kept counts), `idempotency` (requests under an
//! idempotency key), `webhooks` (registering outbound webhooks).

mod commands;
mod events;
mod health;
mod idempotency;
mod messages;
mod replies;
mod webhooks;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::agents::{Backends, EgressPolicy};
use crate::clock::Clock;
use crate::domain::validate;
use crate::domain::{
    Agent, AgentBackend, Liveness, RenewRefused, Session, SessionChange, SessionError,
    SessionEvent, TimeoutConfigPatch, TimeoutPolicy,
};
use crate::store::{AgentDeletion, SessionCounts, SessionFilter, SessionStore};

pub use commands::{Checked, CreateSession, NewAgent, NewWebhook, SendMessage, Transport};
pub use events::{EventSubscription, FeedItem};
pub use idempotency::{Begun, Claim, IdempotentRequest};
pub use messages::{MessagePage, SendOutcome};
pub use replies::{ReplyProgress, ReplyWatch, WaitEnded};

/// The demo agent's id: the example `agentId` of the elizaOS reference page for `POST /api/messaging/sessions`.
pub const DEMO_AGENT_ID: Uuid = Uuid::from_u128(0x3c90c3cc_0d44_4b50_8888_8dd25736052a);

/// Read-modify-write attempts before giving up on a hot session; each failed attempt means another request
/// changed the session in between, so this only runs out under extreme contention.
const MAX_UPDATE_ATTEMPTS: usize = 1000;

/// Sessions that expired at or before this instant are past a `retention` at `now`.
fn retained_after(now: DateTime<Utc>, retention: Duration) -> DateTime<Utc> {
    crate::domain::timeout::add_saturating(now, -retention)
}

fn too_contended(id: &str) -> SessionError {
    SessionError::Store(crate::store::StoreError::Unavailable(format!(
        "session {id} is updated too often to apply this change"
    )))
}

/// A session as of the instant it was read, so that derived fields (`timeRemaining`, ...) agree with it.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub session: Session,
    pub now: DateTime<Utc>,
}

/// Health figures.
#[derive(Debug, Clone)]
pub struct Health {
    pub counts: SessionCounts,
    pub now: DateTime<Utc>,
    pub uptime_seconds: f64,
}

/// A page of active sessions with the counts of everything the filter matches.
#[derive(Debug, Clone)]
pub struct SessionPage {
    pub sessions: Vec<Session>,
    pub counts: SessionCounts,
    pub now: DateTime<Utc>,
}

/// The service's settings.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub policy: TimeoutPolicy,
    /// How long an expired session still answers 410 before it counts as gone.
    pub retention: Duration,
    /// How long an agent may take to answer before the exchange fails with `AGENT_TIMEOUT`.
    pub agent_timeout: std::time::Duration,
    /// How many earlier messages an agent gets as context.
    pub history_limit: u32,
    /// Most unanswered messages a session may have before sends are refused.
    pub max_pending_messages: u32,
    /// Whether a heartbeat waits for the disk (else: for a commit that survives a crash of the process, see
    /// `SessionStore::record_heartbeat`).
    pub durable_heartbeats: bool,
    /// Most active sessions one user may have (0: no limit).
    pub max_sessions_per_user: u32,
    /// Most messages (user messages and replies) one session may hold (0: no limit).
    pub max_messages_per_session: u32,
    /// What agent backends may reach and use (secrets, hosts, reply size, CA roots).
    pub egress: EgressPolicy,
    /// How long a retry under an idempotency key waits for the first request still in flight (then 409).
    pub idempotency_wait: std::time::Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            policy: TimeoutPolicy::default(),
            retention: Duration::hours(24),
            agent_timeout: std::time::Duration::from_secs(60),
            history_limit: 20,
            max_pending_messages: 100,
            durable_heartbeats: false,
            max_sessions_per_user: 1000,
            max_messages_per_session: 10_000,
            egress: EgressPolicy::default(),
            idempotency_wait: idempotency::DEFAULT_WAIT,
        }
    }
}

pub struct SessionService {
    store: Arc<dyn SessionStore>,
    clock: Arc<dyn Clock>,
    policy: TimeoutPolicy,
    retention: Duration,
    max_pending_messages: u32,
    durable_heartbeats: bool,
    max_sessions_per_user: u32,
    max_messages_per_session: u32,
    started: DateTime<Utc>,
    backends: Backends,
    replies: Arc<replies::Replier>,
    /// Cancelled when the server starts shutting down (see [`SessionService::begin_shutdown`]).
    stopping: tokio_util::sync::CancellationToken,
    idempotency: idempotency::IdempotencySettings,
    /// Woken whenever a request under an idempotency key settles here, for retries waiting on it.
    settled: Arc<tokio::sync::Notify>,
    health_counts: Arc<health::HealthCounts>,
}

impl SessionService {
    pub fn new(store: Arc<dyn SessionStore>, clock: Arc<dyn Clock>, config: ServiceConfig) -> Self {
        let started = clock.now();
        let backends = Backends::new(config.egress);
        let stopping = tokio_util::sync::CancellationToken::new();
        let replies = Arc::new(replies::Replier::new(
            store.clone(),
            clock.clone(),
            backends.clone(),
            config.agent_timeout,
            config.history_limit,
            stopping.clone(),
        ));
        let idempotency = idempotency::IdempotencySettings {
            wait: config.idempotency_wait,
            // Past every wait of the first request (an `http` send's agent reply included), with room to spare.
            lease: chrono::Duration::from_std(
                config.agent_timeout * 2 + std::time::Duration::from_secs(60),
            )
            .unwrap_or(Duration::minutes(10)),
        };
        let health_counts = Arc::new(health::HealthCounts::new(
            store.clone(),
            clock.clone(),
            config.retention,
        ));
        Self {
            store,
            clock,
            policy: config.policy,
            retention: config.retention,
            max_pending_messages: config.max_pending_messages,
            durable_heartbeats: config.durable_heartbeats,
            max_sessions_per_user: config.max_sessions_per_user,
            max_messages_per_session: config.max_messages_per_session,
            started,
            backends,
            replies,
            stopping,
            idempotency,
            settled: Arc::new(tokio::sync::Notify::new()),
            health_counts,
        }
    }

    /// Starts stopping, so that nothing holds the shutdown up: reply workers stop (their claims expire and the
    /// messages are answered later), requests waiting for a reply end with "shutting down", and event streams
    /// end (clients reconnect with `Last-Event-ID`, here after a restart or to another instance).
    pub fn begin_shutdown(&self) {
        self.stopping.cancel();
    }

    /// Cancelled once [`SessionService::begin_shutdown`] is called.
    pub fn stopping(&self) -> &tokio_util::sync::CancellationToken {
        &self.stopping
    }

    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// The agent backends' HTTP client and egress policy, which outbound webhooks share.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    pub fn policy(&self) -> &TimeoutPolicy {
        &self.policy
    }

    pub fn retention(&self) -> Duration {
        self.retention
    }

    pub async fn create(&self, body: CreateSession) -> Result<SessionView, SessionError> {
        let now = self.clock.now();
        let agent = self
            .store
            .get_agent(body.agent_id)
            .await?
            .ok_or_else(|| SessionError::AgentNotFound(body.agent_id.to_string()))?;
        let metadata = body.metadata?;
        let requested = body.timeout?;
        let timeout = self.policy.resolve(&requested, &agent.session_defaults);
        if self.max_sessions_per_user > 0
            && self
                .store
                .count_active_sessions_of_user(body.user_id, now)
                .await?
                >= u64::from(self.max_sessions_per_user)
        {
            return Err(SessionError::QuotaExceeded(format!(
                "User '{}' already has {} active sessions, the most allowed: end one first",
                body.user_id, self.max_sessions_per_user
            )));
        }
        let session = Session::new(body.agent_id, body.user_id, metadata, timeout, now);
        // The agent may have been deleted since it was read: then nothing is stored.
        if !self.store.insert_session(&session).await? {
            return Err(SessionError::AgentNotFound(body.agent_id.to_string()));
        }
        crate::metrics::session_created();
        self.health_counts.adjust_active(1);
        Ok(SessionView { session, now })
    }

    pub async fn get(&self, id: &str) -> Result<SessionView, SessionError> {
        let now = self.clock.now();
        let session = self.live(id, now).await?;
        Ok(SessionView { session, now })
    }

    pub async fn list(
        &self,
        filter: SessionFilter,
        limit: u32,
        offset: u64,
    ) -> Result<SessionPage, SessionError> {
        let now = self.clock.now();
        let sessions = self
            .store
            .list_active_sessions(&filter, now, limit, offset)
            .await?;
        let counts = self
            .store
            .count_sessions(&filter, now, self.retained_after(now))
            .await?;
        Ok(SessionPage {
            sessions,
            counts,
            now,
        })
    }

    /// Deletes a session, expired or not; only one already past retention counts as absent.
    pub async fn delete(&self, id: &str) -> Result<(), SessionError> {
        let now = self.clock.now();
        let session = self.lookup(id, now).await?;
        let uuid = session.id;
        let deleted = vec![SessionEvent::deleted(uuid, now)];
        if self.store.delete_session(uuid, deleted).await? {
            crate::metrics::session_deleted(!session.is_expired(now));
            if !session.is_expired(now) {
                self.health_counts.adjust_active(-1);
            }
            Ok(())
        } else {
            Err(SessionError::SessionNotFound(id.to_string()))
        }
    }

    pub async fn renew(&self, id: &str) -> Result<SessionView, SessionError> {
        let renewed = self
            .update(id, |s, now| {
                s.renew(now).map_err(|RenewRefused::MaxDurationReached| {
                    SessionError::RenewalFailed {
                        id: s.id.to_string(),
                        reason: "maximum session duration reached".into(),
                    }
                })?;
                Ok(vec![SessionEvent::session(s, SessionChange::Renewed, now)])
            })
            .await?;
        crate::metrics::session_renewed();
        Ok(renewed)
    }

    pub async fn heartbeat(&self, id: &str) -> Result<SessionView, SessionError> {
        let lazy = !self.durable_heartbeats;
        self.update_as(id, lazy, |s, now| {
            // Only a renewal changes what subscribers see (expiresAt, renewalCount); it is told live only.
            Ok(if s.record_activity(now) {
                vec![SessionEvent::heartbeat_renewal(s, now)]
            } else {
                Vec::new()
            })
        })
        .await
    }

    pub async fn update_timeout(
        &self,
        id: &str,
        patch: TimeoutConfigPatch,
    ) -> Result<SessionView, SessionError> {
        let policy = self.policy;
        self.update(id, move |s, now| {
            let timeout = policy.apply_patch(&s.timeout, &patch).map_err(|reason| {
                SessionError::invalid_field(
                    format!("Invalid timeout configuration: {reason}"),
                    "timeoutMinutes",
                )
            })?;
            s.set_timeout(timeout, now);
            Ok(vec![SessionEvent::session(
                s,
                SessionChange::TimeoutUpdated,
                now,
            )])
        })
        .await
    }

    /// Starts keeping the health route's counts now, as its first call would (see `health`): called as the
    /// server starts, so that the route's first call finds them made instead of counting in place.
    pub fn warm_up_health(&self) {
        self.health_counts.warm_up();
    }

    /// Health figures, or `Unavailable` when the store cannot take writes (so that a server whose every write
    /// would fail does not call itself healthy). The counts are at most a few seconds old (see `health`).
    pub async fn health(&self) -> Result<Health, SessionError> {
        self.store
            .check_writable()
            .await
            .map_err(|e| SessionError::Unavailable(e.to_string()))?;
        let now = self.clock.now();
        let counts = self.health_counts.get(now).await?;
        Ok(Health {
            counts,
            now,
            uptime_seconds: (now - self.started).num_milliseconds().max(0) as f64 / 1000.0,
        })
    }

    pub async fn create_agent(&self, agent: NewAgent) -> Result<Agent, SessionError> {
        let NewAgent {
            name,
            backend,
            session_defaults,
        } = agent;
        self.backends
            .policy()
            .check_backend(&backend)
            .map_err(|refusal| SessionError::invalid_field(refusal.message, refusal.field))?;
        self.insert_agent(name, backend, session_defaults).await
    }

    async fn insert_agent(
        &self,
        name: String,
        backend: AgentBackend,
        session_defaults: TimeoutConfigPatch,
    ) -> Result<Agent, SessionError> {
        let now = self.clock.now();
        let agent = Agent {
            id: crate::domain::ids::new_id(now),
            name,
            backend,
            session_defaults,
            created_at: now,
        };
        self.store.insert_agent(&agent).await?;
        Ok(agent)
    }

    /// On a store without agents, creates the demo echo agent so that a new user can start at once. It has a
    /// fixed id, the example id of the reference documentation, so that its `curl` example works as printed and
    /// several instances starting together on an empty database create it once.
    pub async fn ensure_demo_agent(&self) -> Result<Option<Agent>, SessionError> {
        if !self.store.list_agents().await?.is_empty() {
            return Ok(None);
        }
        let agent = Agent {
            id: DEMO_AGENT_ID,
            name: "Echo".into(),
            backend: AgentBackend::Echo,
            session_defaults: TimeoutConfigPatch::default(),
            created_at: self.clock.now(),
        };
        match self.store.insert_agent(&agent).await {
            Ok(()) => Ok(Some(agent)),
            // Another instance created it first.
            Err(_) if self.store.get_agent(DEMO_AGENT_ID).await?.is_some() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn list_agents(&self) -> Result<Vec<Agent>, SessionError> {
        Ok(self.store.list_agents().await?)
    }

    pub async fn get_agent(&self, id: &str) -> Result<Agent, SessionError> {
        let not_found = || SessionError::AgentNotFound(id.to_string());
        let uuid = validate::parse_uuid(id).ok_or_else(not_found)?;
        self.store.get_agent(uuid).await?.ok_or_else(not_found)
    }

    /// Deletes an agent and its sessions, unless some of them are still active (`AgentInUse`): an agent is not
    /// pulled from under a live conversation.
    pub async fn delete_agent(&self, id: &str) -> Result<(), SessionError> {
        let agent = self.get_agent(id).await?;
        match self.store.delete_agent(agent.id, self.clock.now()).await? {
            AgentDeletion::Deleted => Ok(()),
            AgentDeletion::NotFound => Err(SessionError::AgentNotFound(id.to_string())),
            AgentDeletion::InUse(sessions) => Err(SessionError::AgentInUse {
                id: agent.id.to_string(),
                sessions,
            }),
        }
    }

    /// Removes sessions past their retention, in batches so that no transaction holds the store for long, and
    /// returns how many were removed. After each full batch it rests `rest_factor` times as long as the batch
    /// took (0: only lets queued requests go first), so that a large purge takes a share of the store instead of
    /// all of it. Dropping the future between batches is safe: each batch is its own transaction.
    pub async fn purge_expired(
        &self,
        now: DateTime<Utc>,
        batch: u32,
        rest_factor: u32,
    ) -> Result<u64, SessionError> {
        let cutoff = self.retained_after(now);
        let mut total = 0;
        loop {
            let started = std::time::Instant::now();
            let n = self.store.purge_sessions(cutoff, batch).await?;
            total += n;
            if n < u64::from(batch) {
                return Ok(total);
            }
            if rest_factor == 0 {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(started.elapsed() * rest_factor).await;
            }
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Sets the active-sessions gauge from the store's count (the sweeper's purge pass: a count per pass, never
    /// per request or scrape).
    pub async fn count_active_sessions(&self, now: DateTime<Utc>) -> Result<(), SessionError> {
        let counts = self
            .store
            .count_sessions(&SessionFilter::default(), now, self.retained_after(now))
            .await?;
        crate::metrics::set_active_sessions(counts.active);
        Ok(())
    }

    /// The clock every operation reads (access control uses it too, for token expiry and rate-limit windows).
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Sessions that expired at or before this instant are past retention at `now`.
    fn retained_after(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        retained_after(now, self.retention)
    }

    /// The stored session, unless it does not exist or is past retention (both: not found).
    async fn lookup(&self, id: &str, now: DateTime<Utc>) -> Result<Session, SessionError> {
        let not_found = || SessionError::SessionNotFound(id.to_string());
        let uuid = validate::parse_uuid(id).ok_or_else(not_found)?;
        let session = self.store.get_session(uuid).await?.ok_or_else(not_found)?;
        match session.liveness(now, self.retention) {
            Liveness::Gone => Err(not_found()),
            _ => Ok(session),
        }
    }

    /// The stored session if it is active; expired ones answer `SessionExpired`.
    async fn live(&self, id: &str, now: DateTime<Utc>) -> Result<Session, SessionError> {
        let session = self.lookup(id, now).await?;
        if session.is_expired(now) {
            return Err(SessionError::SessionExpired {
                id: session.id.to_string(),
                expired_at: session.expires_at,
            });
        }
        Ok(session)
    }

    /// Read, transform, conditionally write (with the events the change produced); on a lost race, read again
    /// and retry with the same `now`.
    async fn update(
        &self,
        id: &str,
        change: impl Fn(&mut Session, DateTime<Utc>) -> Result<Vec<SessionEvent>, SessionError>,
    ) -> Result<SessionView, SessionError> {
        self.update_as(id, false, change).await
    }

    /// `update`; `lazy`: stored as a heartbeat (`SessionStore::record_heartbeat`).
    async fn update_as(
        &self,
        id: &str,
        lazy: bool,
        change: impl Fn(&mut Session, DateTime<Utc>) -> Result<Vec<SessionEvent>, SessionError>,
    ) -> Result<SessionView, SessionError> {
        let now = self.clock.now();
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let mut next = self.live(id, now).await?;
            let expected = next.version;
            let events = change(&mut next, now)?;
            next.version = expected + 1;
            let stored = if lazy {
                self.store.record_heartbeat(&next, expected, events).await?
            } else {
                self.store.update_session(&next, expected, events).await?
            };
            if stored {
                return Ok(SessionView { session: next, now });
            }
        }
        Err(too_contended(id))
    }
}
