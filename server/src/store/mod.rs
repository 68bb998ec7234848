//! Persistence: the `SessionStore` trait every backend implements, `StoreError`, and `open(url)`, which picks
//! the backend from the URL scheme. Stores only persist: no clock, no business rules.

mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::{Agent, Session};

pub use sqlite::SqliteStore;

/// What persistence can say went wrong. Cloneable because one failed group commit answers many callers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is shutting down.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else the backend reported (I/O, corruption, a bad row).
    #[error("store backend error: {0}")]
    Backend(String),
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

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    async fn insert_agent(&self, agent: &Agent) -> Result<(), StoreError>;
    async fn get_agent(&self, id: Uuid) -> Result<Option<Agent>, StoreError>;
    /// All agents, oldest first.
    async fn list_agents(&self) -> Result<Vec<Agent>, StoreError>;
    /// Deletes the agent and its sessions. False if there was no such agent.
    async fn delete_agent(&self, id: Uuid) -> Result<bool, StoreError>;

    async fn insert_session(&self, session: &Session) -> Result<(), StoreError>;
    async fn get_session(&self, id: Uuid) -> Result<Option<Session>, StoreError>;
    /// Stores `session` only if the stored row is still at `expected_version` (optimistic concurrency, safe
    /// across processes). Returns false when someone else updated or deleted it first.
    async fn update_session(
        &self,
        session: &Session,
        expected_version: i64,
    ) -> Result<bool, StoreError>;
    async fn delete_session(&self, id: Uuid) -> Result<bool, StoreError>;
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
    /// Deletes up to `limit` sessions with `expires_at <= cutoff`; returns how many. Callers loop, so that no
    /// single transaction holds the database for long.
    async fn purge_sessions(&self, cutoff: DateTime<Utc>, limit: u32) -> Result<u64, StoreError>;

    /// Flushes pending writes and releases the database.
    async fn close(&self);
}

/// Opens the store a `DATABASE_URL` names: `sqlite:` (file or `:memory:`) for now.
pub async fn open(url: &str) -> anyhow::Result<Arc<dyn SessionStore>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else {
        anyhow::bail!("unsupported database URL '{url}': expected sqlite:PATH")
    }
}

pub(crate) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
