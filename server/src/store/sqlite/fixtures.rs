//! What the SQLite store's unit tests start from: a store on a file with one agent, and a session's timeout.

use std::path::Path;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::SqliteStore;
use crate::domain::{Agent, AgentBackend, TimeoutConfig, TimeoutConfigPatch};
use crate::store::SessionStore;

/// A migrated store on `path` holding one echo agent created `at`.
pub async fn store_with_agent(path: &Path, at: DateTime<Utc>) -> (SqliteStore, Agent) {
    let store = SqliteStore::open(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    let agent = Agent {
        id: Uuid::new_v4(),
        name: "a".into(),
        backend: AgentBackend::Echo,
        session_defaults: TimeoutConfigPatch::default(),
        created_at: at,
    };
    store.insert_agent(&agent).await.unwrap();
    (store, agent)
}

/// 30 minutes, renewed by activity, at most an hour, warned 5 minutes before.
pub fn half_hour() -> TimeoutConfig {
    TimeoutConfig {
        timeout_minutes: 30.0,
        auto_renew: true,
        max_duration_minutes: 60.0,
        warning_threshold_minutes: 5.0,
    }
}
