//! The store conformance suite: one set of checks of the `SessionStore` contract, run against every backend
//! (`sqlite::*` on a temp file, `postgres::*` on a fresh database from `pg::postgres_url`), plus the checks that
//! only make sense for several PostgreSQL stores sharing one database (`postgres_instances::*`).
//!
//! Nothing sleeps: events are awaited with a timeout, and "nothing else arrived" is shown by a marker event
//! published afterwards arriving next.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use agent_sessions_server::domain::{
    Agent, AgentBackend, Attachment, AttachmentKind, EventKind, EventPayload, Message, Notice,
    OpenAiBackend, ReplyFailure, Session, SessionChange, SessionEvent, TimeoutConfig,
    TimeoutConfigPatch,
};
use agent_sessions_server::store::{
    AgentDeletion, ClaimAt, LiveEvents, MessageWindow, Order, PostgresStore, SessionCounts,
    SessionFilter, SessionStore, SqliteStore,
};
use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::pg::{postgres_url, psql};

mod events;
mod fixtures;
mod idempotency;
mod messages;
mod postgres_instances;
mod records;
mod webhooks;

use events::*;
use fixtures::*;
use idempotency::*;
use messages::*;
use records::*;
use webhooks::*;

/// Long enough for a loaded CI machine; only reached when an event is really missing.
const WAIT: StdDuration = StdDuration::from_secs(20);

// ---------------------------------------------------------------------------------------------------------
// Backends.

struct Backend {
    store: Arc<dyn SessionStore>,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite:{}", dir.path().join("store.db").display());
        let store = SqliteStore::open(&url).await.expect("open sqlite");
        Self {
            store: Arc::new(store),
            _dir: Some(dir),
        }
    }

    async fn postgres() -> Option<Self> {
        let url = postgres_url().await?;
        Some(Self {
            store: open_postgres(&url).await,
            _dir: None,
        })
    }
}

async fn open_postgres(url: &str) -> Arc<dyn SessionStore> {
    Arc::new(PostgresStore::open(url).await.expect("open postgres"))
}

/// One `#[tokio::test]` per (check, backend): `sqlite::<check>` and `postgres::<check>`.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let backend = super::Backend::sqlite().await;
                    super::$check(backend.store.clone()).await;
                    backend.store.close().await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let Some(backend) = super::Backend::postgres().await else {
                        eprintln!("skipping PostgreSQL: no server");
                        return;
                    };
                    super::$check(backend.store.clone()).await;
                    backend.store.close().await;
                }
            )*
        }
    };
}

/// Events a session keeps in the stores of `capped::*`.
const KEPT: u32 = 3;

/// The checks of stores that keep only `KEPT` events per session, on both backends.
mod capped {
    use agent_sessions_server::store::StoreOptions;

    use super::*;

    fn options() -> StoreOptions {
        StoreOptions {
            events_per_session: KEPT,
            ..StoreOptions::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_event_logs_keep_their_newest_events() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite:{}", dir.path().join("store.db").display());
        let store: Arc<dyn SessionStore> = Arc::new(
            SqliteStore::open_with(&url, &options())
                .await
                .expect("open"),
        );
        event_logs_keep_their_newest_events(store.clone()).await;
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_event_logs_keep_their_newest_events() {
        let Some(url) = postgres_url().await else {
            eprintln!("skipping PostgreSQL: no server");
            return;
        };
        let store: Arc<dyn SessionStore> = Arc::new(
            PostgresStore::open_with(&url, &options())
                .await
                .expect("open"),
        );
        event_logs_keep_their_newest_events(store.clone()).await;
        store.close().await;
    }
}

conformance!(
    agents_insert_get_list_delete,
    sessions_round_trip_and_update_with_version_check,
    reads_see_every_acknowledged_write,
    concurrent_version_checked_increments_lose_nothing,
    active_sessions_filter_order_and_page,
    session_counts,
    purge_in_batches_takes_messages_and_events,
    sessions_due_notice,
    messages_record_reply_list_and_recent,
    events_after_returns_persisted_events_only,
    subscribers_get_committed_events_in_commit_order,
    delete_session_removes_everything_and_announces,
    replies_are_claimed_one_at_a_time_in_order,
    concurrent_claims_take_a_message_once,
    a_recorded_message_claims_its_reply_with_it,
    chunks_reach_subscribers_before_the_stored_reply,
    large_events_arrive_whole,
    a_write_failing_halfway_changes_nothing,
    unanswered_messages_are_counted,
    a_setting_is_written_once,
    deleting_an_agent_leaves_no_orphans_under_racing_inserts,
    quotas_are_counted,
    sessions_are_found_by_channel,
    idempotency_keys_claim_complete_and_replay,
    a_released_idempotency_key_is_claimed_again,
    idempotency_keys_expire_and_stale_claims_are_taken_over,
    expired_idempotency_keys_are_purged_in_batches,
    concurrent_idempotency_claims_take_a_key_once,
    deliveries_are_queued_with_their_events,
    claims_take_each_queues_head_under_a_lease,
);
