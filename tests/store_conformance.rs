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
    ReplyFailure, Session, SessionChange, SessionEvent, TimeoutConfig, TimeoutConfigPatch,
};
use agent_sessions_server::store::{
    AgentDeletion, MessageWindow, Order, PostgresStore, SessionCounts, SessionFilter, SessionStore,
    SqliteStore,
};
use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::pg::{postgres_url, psql};

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
    chunks_reach_subscribers_before_the_stored_reply,
    large_events_arrive_whole,
    a_write_failing_halfway_changes_nothing,
    unanswered_messages_are_counted,
    a_setting_is_written_once,
    deleting_an_agent_leaves_no_orphans_under_racing_inserts,
    quotas_are_counted,
);

// ---------------------------------------------------------------------------------------------------------
// Fixtures.

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_735_689_600, 0).expect("t0")
}

/// `t0` plus `ms` milliseconds.
fn at(ms: i64) -> DateTime<Utc> {
    t0() + Duration::milliseconds(ms)
}

fn config(timeout_minutes: f64, warning_threshold_minutes: f64) -> TimeoutConfig {
    TimeoutConfig {
        timeout_minutes,
        auto_renew: true,
        max_duration_minutes: 720.0,
        warning_threshold_minutes,
    }
}

fn new_agent(name: &str, created_at: DateTime<Utc>) -> Agent {
    Agent {
        id: Uuid::new_v4(),
        name: name.to_string(),
        backend: AgentBackend::Echo,
        session_defaults: TimeoutConfigPatch::default(),
        created_at,
    }
}

/// A 30-minute session (warning 5 minutes before expiry) created at `created_at`.
fn new_session(agent_id: Uuid, user_id: Uuid, created_at: DateTime<Utc>) -> Session {
    let mut metadata = Map::new();
    metadata.insert("plan".into(), json!("pro"));
    Session::new(agent_id, user_id, metadata, config(30.0, 5.0), created_at)
}

/// A session expiring at `expires_at` (`t0`-relative ms), warned `warn_ms` before.
fn session_expiring(agent_id: Uuid, created_ms: i64, expires_ms: i64, warn_ms: i64) -> Session {
    let mut s = new_session(agent_id, Uuid::new_v4(), at(created_ms));
    s.timeout.warning_threshold_minutes = warn_ms as f64 / 60_000.0;
    s.expires_at = at(expires_ms);
    s
}

fn user_message(s: &Session, content: &str, created_at: DateTime<Utc>) -> Message {
    Message {
        id: Uuid::new_v4(),
        seq: 0,
        session_id: s.id,
        author_id: s.user_id,
        is_agent: false,
        content: content.to_string(),
        metadata: Map::new(),
        attachments: None,
        in_reply_to: None,
        created_at,
    }
}

fn agent_reply(s: &Session, to: &Message, content: &str, created_at: DateTime<Utc>) -> Message {
    Message {
        id: Uuid::new_v4(),
        seq: 0,
        session_id: s.id,
        author_id: s.agent_id,
        is_agent: true,
        content: content.to_string(),
        metadata: Map::new(),
        attachments: None,
        in_reply_to: Some(to.id),
        created_at,
    }
}

/// Records a user message with a `message` event, bumping the session's version (and nothing else, so that
/// its expiry stays where a test put it); returns it with its seq, and moves `s` to the stored state.
async fn record(
    store: &dyn SessionStore,
    s: &mut Session,
    content: &str,
    created_at: DateTime<Utc>,
) -> Message {
    let mut next = s.clone();
    next.version += 1;
    let mut m = user_message(&next, content, created_at);
    let seq = store
        .record_message(&next, s.version, &m, vec![SessionEvent::message(&m)])
        .await
        .expect("record_message")
        .expect("session at the expected version");
    m.seq = seq;
    *s = next;
    m
}

/// Stores `s`, with an agent of its `agent_id` first if the store has none (sessions are only stored for agents
/// that exist).
async fn insert(store: &dyn SessionStore, s: &Session) {
    if store.get_agent(s.agent_id).await.unwrap().is_none() {
        let mut agent = new_agent("owner", s.created_at);
        agent.id = s.agent_id;
        store.insert_agent(&agent).await.unwrap();
    }
    assert!(
        store.insert_session(s).await.unwrap(),
        "the session is stored"
    );
}

/// Stores `s` again at version + 1 with one `session` event; the caller's copy follows.
async fn touch(store: &dyn SessionStore, s: &mut Session, now: DateTime<Utc>) -> bool {
    let mut next = s.clone();
    next.version += 1;
    let event = SessionEvent::session(&next, SessionChange::Renewed, now);
    let ok = store
        .update_session(&next, s.version, vec![event])
        .await
        .expect("update_session");
    if ok {
        *s = next;
    }
    ok
}

async fn next_event(rx: &mut broadcast::Receiver<SessionEvent>) -> SessionEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an event within the wait")
        .expect("the event feed is open")
}

/// A transient event that proves, by arriving next, that nothing else was delivered before it.
fn marker(session_id: Uuid) -> SessionEvent {
    SessionEvent::chunk(
        session_id,
        Uuid::nil(),
        Uuid::nil(),
        "marker",
        u64::MAX >> 12,
        at(0),
    )
}

async fn expect_marker_next(
    store: &dyn SessionStore,
    rx: &mut broadcast::Receiver<SessionEvent>,
    session_id: Uuid,
) {
    let m = marker(session_id);
    store.publish(&m);
    assert_eq!(next_event(rx).await, m, "an unexpected event came first");
}

fn ids(messages: &[Message]) -> Vec<Uuid> {
    messages.iter().map(|m| m.id).collect()
}

fn session_ids(sessions: &[Session]) -> Vec<Uuid> {
    sessions.iter().map(|s| s.id).collect()
}

/// `n` read-modify-write increments of `renewal_count`, spread over `stores`, each retried until its version
/// check passes; each success stores a `session` event.
async fn version_checked_increments(stores: &[Arc<dyn SessionStore>], id: Uuid, n: usize) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            tokio::spawn(async move {
                loop {
                    let current = store.get_session(id).await.expect("get").expect("exists");
                    let mut next = current.clone();
                    next.renewal_count += 1;
                    next.version += 1;
                    let event = SessionEvent::session(&next, SessionChange::Renewed, at(0));
                    if store
                        .update_session(&next, current.version, vec![event])
                        .await
                        .expect("update")
                    {
                        return;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("increment task");
    }
}

/// The `renewalCount` carried by each `session` event, in order.
fn renewal_counts(events: &[SessionEvent]) -> Vec<i64> {
    events
        .iter()
        .map(|e| match &e.payload {
            EventPayload::Session { session, .. } => session.renewal_count,
            other => panic!("not a session event: {other:?}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Checks run against every backend.

async fn agents_insert_get_list_delete(store: Arc<dyn SessionStore>) {
    let mut first = new_agent("first", at(0));
    first.backend = AgentBackend::OpenAi {
        base_url: "http://127.0.0.1:1/v1".into(),
        model: "m".into(),
        api_key_env: Some("KEY".into()),
        system_prompt: None,
    };
    first.session_defaults.timeout_minutes = Some(12.5);
    let second = new_agent("second", at(1000));
    store.insert_agent(&second).await.unwrap();
    store.insert_agent(&first).await.unwrap();
    assert_eq!(
        store.get_agent(first.id).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(store.get_agent(Uuid::new_v4()).await.unwrap(), None);
    assert_eq!(
        store.list_agents().await.unwrap(),
        vec![first.clone(), second.clone()],
        "oldest first"
    );

    let mut doomed = new_session(first.id, Uuid::new_v4(), at(0));
    let mut kept = new_session(second.id, Uuid::new_v4(), at(0));
    insert(&*store, &doomed).await;
    insert(&*store, &kept).await;
    record(&*store, &mut doomed, "bye", at(10)).await;
    touch(&*store, &mut doomed, at(20)).await;
    let kept_message = record(&*store, &mut kept, "hi", at(10)).await;

    // An agent with an active session stays; once its sessions have expired, it goes with them.
    assert_eq!(
        store.delete_agent(first.id, at(20)).await.unwrap(),
        AgentDeletion::InUse(1)
    );
    assert!(store.get_agent(first.id).await.unwrap().is_some());
    assert!(store.get_session(doomed.id).await.unwrap().is_some());
    let after_expiry = doomed.expires_at;
    assert_eq!(
        store.delete_agent(first.id, after_expiry).await.unwrap(),
        AgentDeletion::Deleted
    );
    assert_eq!(
        store.delete_agent(first.id, after_expiry).await.unwrap(),
        AgentDeletion::NotFound,
        "already gone"
    );
    // No session is stored for an agent that does not exist.
    let orphan = new_session(first.id, Uuid::new_v4(), at(30));
    assert!(!store.insert_session(&orphan).await.unwrap());
    assert_eq!(store.get_session(orphan.id).await.unwrap(), None);
    assert_eq!(store.get_agent(first.id).await.unwrap(), None);
    assert_eq!(store.get_session(doomed.id).await.unwrap(), None);
    let window = MessageWindow::default();
    let none = store
        .list_messages(doomed.id, window, Order::OldestFirst, 100)
        .await
        .unwrap();
    assert!(none.is_empty(), "messages deleted with the agent");
    assert!(store
        .events_after(doomed.id, 0, 100)
        .await
        .unwrap()
        .is_empty());

    assert_eq!(
        store.get_session(kept.id).await.unwrap(),
        Some(kept.clone())
    );
    let messages = store
        .list_messages(kept.id, window, Order::OldestFirst, 100)
        .await
        .unwrap();
    assert_eq!(messages, vec![kept_message]);
    assert_eq!(store.events_after(kept.id, 0, 100).await.unwrap().len(), 1);
}

/// Read-your-writes while readers are busy: the SQLite store reuses a reader's snapshot across lookups until
/// something is committed, so a lookup after an acknowledged update must never answer from an older snapshot.
/// Readers on other tasks keep the pooled connections' snapshots warm throughout.
async fn reads_see_every_acknowledged_write(store: Arc<dyn SessionStore>) {
    let s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
    insert(&*store, &s).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (store, stop, id) = (store.clone(), stop.clone(), s.id);
            tokio::spawn(async move {
                let mut last = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let seen = store.get_session(id).await.unwrap().unwrap().version;
                    assert!(seen >= last, "a later lookup saw an older version");
                    last = seen;
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let mut current = s;
    for i in 0..300 {
        let mut next = current.clone();
        next.renewal_count += 1;
        next.version += 1;
        assert!(store
            .update_session(&next, current.version, vec![])
            .await
            .unwrap());
        let read = store.get_session(next.id).await.unwrap().unwrap();
        assert_eq!(
            read.version, next.version,
            "update {i} was acknowledged but not read back"
        );
        current = next;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
}

async fn sessions_round_trip_and_update_with_version_check(store: Arc<dyn SessionStore>) {
    let mut s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
    s.timeout.timeout_minutes = 0.25;
    s.expires_at = s.compute_expires_at();
    s.metadata.insert(
        "nested".into(),
        json!({"a": [1, 2.5, "x\u{0}y"], "b": null}),
    );
    insert(&*store, &s).await;
    assert_eq!(store.get_session(s.id).await.unwrap(), Some(s.clone()));
    assert_eq!(store.get_session(Uuid::new_v4()).await.unwrap(), None);

    let mut next = s.clone();
    assert!(next.record_activity(at(5_000)));
    next.notice = Notice::Warned;
    next.metadata.insert("k".into(), json!(1));
    next.version += 1;
    let event = SessionEvent::session(&next, SessionChange::Renewed, at(5_000));
    assert!(store
        .update_session(&next, s.version, vec![event])
        .await
        .unwrap());
    assert_eq!(store.get_session(s.id).await.unwrap(), Some(next.clone()));

    // A writer that read the old version loses, and writes nothing: not the row, not its events.
    let mut stale = s.clone();
    stale.renewal_count = 99;
    stale.version += 1;
    let event = SessionEvent::session(&stale, SessionChange::Renewed, at(6_000));
    assert!(!store
        .update_session(&stale, s.version, vec![event])
        .await
        .unwrap());
    assert_eq!(store.get_session(s.id).await.unwrap(), Some(next.clone()));
    let events = store.events_after(s.id, 0, 100).await.unwrap();
    assert_eq!(renewal_counts(&events), vec![1]);

    let mut unknown = next.clone();
    unknown.id = Uuid::new_v4();
    assert!(!store
        .update_session(&unknown, next.version, vec![])
        .await
        .unwrap());
}

async fn concurrent_version_checked_increments_lose_nothing(store: Arc<dyn SessionStore>) {
    let s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
    insert(&*store, &s).await;
    version_checked_increments(std::slice::from_ref(&store), s.id, 50).await;
    let stored = store.get_session(s.id).await.unwrap().unwrap();
    assert_eq!(stored.renewal_count, 50);
    assert_eq!(stored.version, 50);
    // One event per successful update, and their seq order is the order of the updates.
    let events = store.events_after(s.id, 0, 100).await.unwrap();
    assert_eq!(renewal_counts(&events), (1..=50).collect::<Vec<_>>());
}

async fn active_sessions_filter_order_and_page(store: Arc<dyn SessionStore>) {
    let (agent_a, agent_b) = (Uuid::new_v4(), Uuid::new_v4());
    let (user_1, user_2) = (Uuid::new_v4(), Uuid::new_v4());
    let s1 = new_session(agent_a, user_1, at(1_000));
    let s2 = new_session(agent_a, user_2, at(2_000));
    let s3 = new_session(agent_b, user_1, at(3_000));
    let s4 = new_session(agent_a, user_1, at(2_000));
    let mut expired = new_session(agent_a, user_1, at(4_000));
    expired.expires_at = at(10_000); // exactly `active_at`: no longer active
    for s in [&s1, &s2, &s3, &s4, &expired] {
        insert(&*store, s).await;
    }
    // Newest first; equal creation times by id, descending.
    let (first_tie, second_tie) = if s2.id > s4.id {
        (&s2, &s4)
    } else {
        (&s4, &s2)
    };
    let list = |filter: SessionFilter, limit: u32, offset: u64| {
        let store = store.clone();
        async move {
            session_ids(
                &store
                    .list_active_sessions(&filter, at(10_000), limit, offset)
                    .await
                    .unwrap(),
            )
        }
    };
    let all = SessionFilter::default();
    assert_eq!(
        list(all.clone(), 10, 0).await,
        vec![s3.id, first_tie.id, second_tie.id, s1.id]
    );
    assert_eq!(
        list(all.clone(), 2, 1).await,
        vec![first_tie.id, second_tie.id]
    );
    assert_eq!(list(all.clone(), 10, 4).await, Vec::<Uuid>::new());
    let by_agent = SessionFilter {
        agent_id: Some(agent_a),
        user_id: None,
    };
    assert_eq!(
        list(by_agent, 10, 0).await,
        vec![first_tie.id, second_tie.id, s1.id]
    );
    let by_user = SessionFilter {
        agent_id: None,
        user_id: Some(user_1),
    };
    assert_eq!(list(by_user, 10, 0).await, vec![s3.id, s4.id, s1.id]);
    let both = SessionFilter {
        agent_id: Some(agent_a),
        user_id: Some(user_1),
    };
    assert_eq!(list(both, 10, 0).await, vec![s4.id, s1.id]);
    let full = store
        .list_active_sessions(&all, at(10_000), 1, 0)
        .await
        .unwrap();
    assert_eq!(full, vec![s3.clone()], "whole sessions come back");
}

async fn session_counts(store: Arc<dyn SessionStore>) {
    let agent = Uuid::new_v4();
    let now = 1_000_000;
    let retention = 100_000;
    // Active and far from expiry; active and inside its warning threshold; expired but retained; expired past
    // retention (not counted at all); and one of another agent.
    let calm = session_expiring(agent, 0, now + 500_000, 60_000);
    let warned = session_expiring(agent, 0, now + 30_000, 60_000);
    let retained = session_expiring(agent, 0, now - 50_000, 60_000);
    let gone = session_expiring(agent, 0, now - retention, 60_000);
    let other = session_expiring(Uuid::new_v4(), 0, now + 30_000, 60_000);
    for s in [&calm, &warned, &retained, &gone, &other] {
        insert(&*store, s).await;
    }
    let by_agent = SessionFilter {
        agent_id: Some(agent),
        user_id: None,
    };
    let counts = store
        .count_sessions(&by_agent, at(now), at(now - retention))
        .await
        .unwrap();
    assert_eq!(
        counts,
        SessionCounts {
            total: 3,
            active: 2,
            expiring_soon: 1
        }
    );
    let counts = store
        .count_sessions(&SessionFilter::default(), at(now), at(now - retention))
        .await
        .unwrap();
    assert_eq!(
        counts,
        SessionCounts {
            total: 4,
            active: 3,
            expiring_soon: 2
        }
    );
    let by_user = SessionFilter {
        agent_id: None,
        user_id: Some(calm.user_id),
    };
    let counts = store
        .count_sessions(&by_user, at(now), at(now - retention))
        .await
        .unwrap();
    assert_eq!(
        counts,
        SessionCounts {
            total: 1,
            active: 1,
            expiring_soon: 0
        }
    );
}

async fn purge_in_batches_takes_messages_and_events(store: Arc<dyn SessionStore>) {
    let agent = Uuid::new_v4();
    let mut expired = Vec::new();
    for i in 0..5 {
        let mut s = session_expiring(agent, 0, 1_000 + i * 100, 0);
        insert(&*store, &s).await;
        record(&*store, &mut s, "old", at(10)).await;
        expired.push(s);
    }
    let mut live = session_expiring(agent, 0, 1_000_000, 0);
    insert(&*store, &live).await;
    let live_message = record(&*store, &mut live, "new", at(10)).await;

    let cutoff = at(5_000);
    assert_eq!(store.purge_sessions(cutoff, 2).await.unwrap(), 2);
    // The earliest expiries go first.
    assert_eq!(store.get_session(expired[0].id).await.unwrap(), None);
    assert_eq!(store.get_session(expired[1].id).await.unwrap(), None);
    assert!(store.get_session(expired[2].id).await.unwrap().is_some());
    assert_eq!(store.purge_sessions(cutoff, 2).await.unwrap(), 2);
    assert_eq!(store.purge_sessions(cutoff, 2).await.unwrap(), 1);
    assert_eq!(store.purge_sessions(cutoff, 2).await.unwrap(), 0);
    for s in &expired {
        assert_eq!(store.get_session(s.id).await.unwrap(), None);
        let messages = store
            .list_messages(s.id, MessageWindow::default(), Order::OldestFirst, 10)
            .await
            .unwrap();
        assert!(messages.is_empty(), "messages purged with their session");
        assert!(store.events_after(s.id, 0, 10).await.unwrap().is_empty());
    }
    assert_eq!(
        store.get_session(live.id).await.unwrap(),
        Some(live.clone())
    );
    let messages = store
        .list_messages(live.id, MessageWindow::default(), Order::OldestFirst, 10)
        .await
        .unwrap();
    assert_eq!(messages, vec![live_message]);
    assert_eq!(store.events_after(live.id, 0, 10).await.unwrap().len(), 1);
}

async fn sessions_due_notice(store: Arc<dyn SessionStore>) {
    let agent = Uuid::new_v4();
    let now = 100_000;
    let not_yet = session_expiring(agent, 0, now + 50_000, 10_000);
    let to_warn = session_expiring(agent, 0, now + 5_000, 10_000); // warn_at = now - 5000
    let mut warned = session_expiring(agent, 0, now + 6_000, 10_000);
    warned.notice = Notice::Warned;
    let mut warned_expired = session_expiring(agent, 0, now - 1_000, 10_000); // warn_at = now - 11000
    warned_expired.notice = Notice::Warned;
    let mut announced = session_expiring(agent, 0, now - 2_000, 10_000);
    announced.notice = Notice::Expired;
    let silent_expired = session_expiring(agent, 0, now - 500, 1_000); // warn_at = now - 1500
    for s in [
        &not_yet,
        &to_warn,
        &warned,
        &warned_expired,
        &announced,
        &silent_expired,
    ] {
        insert(&*store, s).await;
    }
    let due = store.sessions_due_notice(at(now), 10).await.unwrap();
    assert_eq!(
        session_ids(&due),
        vec![warned_expired.id, to_warn.id, silent_expired.id],
        "due ones, by warn_at"
    );
    assert_eq!(due[0], warned_expired);
    let due = store.sessions_due_notice(at(now), 2).await.unwrap();
    assert_eq!(session_ids(&due), vec![warned_expired.id, to_warn.id]);
}

async fn messages_record_reply_list_and_recent(store: Arc<dyn SessionStore>) {
    let mut s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
    insert(&*store, &s).await;
    let m1 = record(&*store, &mut s, "one", at(1_000)).await;
    let m2 = record(&*store, &mut s, "two", at(2_000)).await;
    let m3 = record(&*store, &mut s, "three, same time", at(2_000)).await;
    assert!(m1.seq < m2.seq && m2.seq < m3.seq);

    // A stale version stores nothing.
    let mut stale = s.clone();
    stale.version += 1;
    let lost = user_message(&stale, "lost", at(2_500));
    let outcome = store
        .record_message(
            &stale,
            s.version - 1,
            &lost,
            vec![SessionEvent::message(&lost)],
        )
        .await
        .unwrap();
    assert_eq!(outcome, None);
    assert_eq!(store.get_session(s.id).await.unwrap(), Some(s.clone()));

    let mut reply = agent_reply(&s, &m3, "answer", at(3_000));
    reply.metadata.insert("thought".into(), json!("hmm"));
    reply.attachments = Some(vec![Attachment {
        kind: AttachmentKind::Image,
        url: "https://example.com/a.png".into(),
        name: Some("a.png".into()),
        size: Some(1.5),
        mime_type: None,
    }]);
    assert!(store
        .insert_reply(&reply, vec![SessionEvent::message(&reply)])
        .await
        .unwrap());
    let mut orphan = reply.clone();
    orphan.id = Uuid::new_v4();
    orphan.session_id = Uuid::new_v4();
    assert!(!store.insert_reply(&orphan, vec![]).await.unwrap());

    let all = MessageWindow::default();
    let oldest = store
        .list_messages(s.id, all, Order::OldestFirst, 100)
        .await
        .unwrap();
    assert_eq!(ids(&oldest), vec![m1.id, m2.id, m3.id, reply.id]);
    reply.seq = oldest[3].seq;
    assert!(reply.seq > m3.seq);
    assert_eq!(oldest[3], reply, "a reply reads back as stored");
    assert_eq!(oldest[0], m1);
    let newest = store
        .list_messages(s.id, all, Order::NewestFirst, 100)
        .await
        .unwrap();
    assert_eq!(ids(&newest), vec![reply.id, m3.id, m2.id, m1.id]);
    let window = MessageWindow {
        after_ms: Some(1_735_689_601_000),
        before_ms: Some(1_735_689_603_000),
    };
    let inside = store
        .list_messages(s.id, window, Order::OldestFirst, 100)
        .await
        .unwrap();
    assert_eq!(ids(&inside), vec![m2.id, m3.id], "bounds are exclusive");
    let first_two = store
        .list_messages(s.id, all, Order::OldestFirst, 2)
        .await
        .unwrap();
    assert_eq!(ids(&first_two), vec![m1.id, m2.id]);
    let last_two = store
        .list_messages(s.id, all, Order::NewestFirst, 2)
        .await
        .unwrap();
    assert_eq!(ids(&last_two), vec![reply.id, m3.id]);

    let context = store.recent_messages(s.id, reply.seq, 2).await.unwrap();
    assert_eq!(ids(&context), vec![m2.id, m3.id], "oldest first");
    assert!(store
        .recent_messages(s.id, m1.seq, 10)
        .await
        .unwrap()
        .is_empty());
    let everything = store.recent_messages(s.id, i64::MAX, 10).await.unwrap();
    assert_eq!(everything, oldest);
}

async fn events_after_returns_persisted_events_only(store: Arc<dyn SessionStore>) {
    let s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
    insert(&*store, &s).await;
    let mut next = s.clone();
    next.version += 1;
    let events = vec![
        SessionEvent::session(&next, SessionChange::Renewed, at(1_000)),
        SessionEvent::chunk(s.id, Uuid::new_v4(), Uuid::new_v4(), "c", 0, at(1_000)),
        SessionEvent::warning(&next, at(1_000)),
    ];
    assert!(store
        .update_session(&next, s.version, events.clone())
        .await
        .unwrap());
    let stored = store.events_after(s.id, 0, 100).await.unwrap();
    assert_eq!(stored.len(), 2, "the chunk is transient");
    let seqs: Vec<i64> = stored.iter().map(|e| e.seq.expect("seq")).collect();
    assert!(seqs[0] < seqs[1]);
    let mut expected = vec![events[0].clone(), events[2].clone()];
    expected[0].seq = Some(seqs[0]);
    expected[1].seq = Some(seqs[1]);
    assert_eq!(stored, expected);
    assert_eq!(
        store.events_after(s.id, seqs[0], 100).await.unwrap(),
        vec![expected[1].clone()]
    );
    assert_eq!(
        store.events_after(s.id, 0, 1).await.unwrap(),
        vec![expected[0].clone()]
    );
    assert!(store
        .events_after(Uuid::new_v4(), 0, 100)
        .await
        .unwrap()
        .is_empty());
}

async fn subscribers_get_committed_events_in_commit_order(store: Arc<dyn SessionStore>) {
    let s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
    let other = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
    insert(&*store, &s).await;
    insert(&*store, &other).await;
    let mut rx = store.subscribe(s.id);

    // Concurrent writers: every committed event arrives once, in commit order, with the seq it was stored with.
    let mut other_copy = other.clone();
    touch(&*store, &mut other_copy, at(1)).await;
    version_checked_increments(std::slice::from_ref(&store), s.id, 20).await;
    let mut received = Vec::new();
    for _ in 0..20 {
        received.push(next_event(&mut rx).await);
    }
    assert_eq!(renewal_counts(&received), (1..=20).collect::<Vec<_>>());
    assert_eq!(received, store.events_after(s.id, 0, 100).await.unwrap());

    // Transient events go to subscribers without a seq.
    let chunk = SessionEvent::chunk(s.id, Uuid::new_v4(), Uuid::new_v4(), "hel", 0, at(5));
    store.publish(&chunk);
    assert_eq!(next_event(&mut rx).await, chunk);

    // A failed update announces nothing; the other session's events are not ours.
    let current = store.get_session(s.id).await.unwrap().unwrap();
    let event = SessionEvent::session(&current, SessionChange::Renewed, at(6));
    assert!(!store
        .update_session(&current, current.version - 1, vec![event])
        .await
        .unwrap());
    expect_marker_next(&*store, &mut rx, s.id).await;

    // A second subscriber sees what is committed after it subscribed.
    let mut late = store.subscribe(s.id);
    let mut copy = current.clone();
    assert!(touch(&*store, &mut copy, at(7)).await);
    let a = next_event(&mut rx).await;
    let b = next_event(&mut late).await;
    assert_eq!(a, b);
    assert_eq!(renewal_counts(&[a]), vec![20]);
}

async fn delete_session_removes_everything_and_announces(store: Arc<dyn SessionStore>) {
    let mut s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
    insert(&*store, &s).await;
    let m = record(&*store, &mut s, "hi", at(10)).await;
    let mut rx = store.subscribe(s.id);
    let deleted = SessionEvent::deleted(s.id, at(20));
    assert!(store
        .delete_session(s.id, vec![deleted.clone()])
        .await
        .unwrap());
    assert_eq!(next_event(&mut rx).await, deleted);
    assert_eq!(store.get_session(s.id).await.unwrap(), None);
    assert!(store
        .list_messages(s.id, MessageWindow::default(), Order::OldestFirst, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store.events_after(s.id, 0, 10).await.unwrap().is_empty());
    // A reply to a deleted session is not stored.
    let reply = agent_reply(&s, &m, "late", at(30));
    assert!(!store.insert_reply(&reply, vec![]).await.unwrap());
    // Deleting again finds nothing and announces nothing.
    assert!(!store
        .delete_session(s.id, vec![deleted.clone()])
        .await
        .unwrap());
    expect_marker_next(&*store, &mut rx, s.id).await;
}

async fn replies_are_claimed_one_at_a_time_in_order(store: Arc<dyn SessionStore>) {
    let mut s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
    insert(&*store, &s).await;
    let m1 = record(&*store, &mut s, "one", at(1_000)).await;
    let m2 = record(&*store, &mut s, "two", at(2_000)).await;
    let m3 = record(&*store, &mut s, "three", at(3_000)).await;
    let lease = 60_000;
    let id = s.id;
    let claim = |now: i64| {
        let store = store.clone();
        async move {
            store
                .claim_reply(id, at(now), at(now - lease))
                .await
                .unwrap()
        }
    };

    assert_eq!(claim(10_000).await, Some(m1.clone()), "the oldest first");
    assert_eq!(claim(10_001).await, None, "one claim at a time");
    // A claim older than the lease is presumed dead and taken over, by the same message.
    assert_eq!(claim(10_000 + lease).await, Some(m1.clone()));
    assert_eq!(claim(10_001 + lease).await, None);

    let now = 80_000;
    let r1 = agent_reply(&s, &m1, "re: one", at(now));
    assert!(store
        .finish_reply(m1.id, Some(&r1), vec![SessionEvent::message(&r1)])
        .await
        .unwrap());
    let again = agent_reply(&s, &m1, "twice", at(now));
    assert!(
        !store
            .finish_reply(m1.id, Some(&again), vec![])
            .await
            .unwrap(),
        "a finished claim cannot be finished again"
    );

    // Stalled: pending since at or before `stale_before`, or claimed then and never finished.
    assert_eq!(
        store
            .sessions_with_stalled_replies(at(1_999), 10)
            .await
            .unwrap(),
        Vec::<Uuid>::new()
    );
    assert_eq!(
        store
            .sessions_with_stalled_replies(at(2_000), 10)
            .await
            .unwrap(),
        vec![s.id]
    );

    assert_eq!(claim(now).await, Some(m2.clone()));
    let failed = SessionEvent::reply_failed(
        s.id,
        m2.id,
        ReplyFailure::Failed {
            reason: "boom".into(),
        },
        at(now),
    );
    assert!(store.finish_reply(m2.id, None, vec![failed]).await.unwrap());
    assert_eq!(claim(now + 1).await, Some(m3.clone()));
    // m3 is in progress, claimed at now + 1: stalled only once that is at or before `stale_before`.
    assert_eq!(
        store
            .sessions_with_stalled_replies(at(now), 10)
            .await
            .unwrap(),
        Vec::<Uuid>::new()
    );
    assert_eq!(
        store
            .sessions_with_stalled_replies(at(now + 1), 10)
            .await
            .unwrap(),
        vec![s.id]
    );
    let r3 = agent_reply(&s, &m3, "re: three", at(now + 2));
    assert!(store.finish_reply(m3.id, Some(&r3), vec![]).await.unwrap());
    assert_eq!(claim(now + 3).await, None, "nothing left to answer");
    assert!(store
        .sessions_with_stalled_replies(at(1_000_000_000), 10)
        .await
        .unwrap()
        .is_empty());

    let history = store
        .list_messages(s.id, MessageWindow::default(), Order::OldestFirst, 100)
        .await
        .unwrap();
    assert_eq!(ids(&history), vec![m1.id, m2.id, m3.id, r1.id, r3.id]);
    assert_eq!(history[3].in_reply_to, Some(m1.id));
    assert_eq!(history[4].in_reply_to, Some(m3.id));
    let events = store.events_after(s.id, 0, 100).await.unwrap();
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind()).collect();
    assert_eq!(
        kinds,
        vec![EventKind::Message; 4],
        "3 user messages, 1 reply"
    );

    // A claim on a session deleted meanwhile cannot store its reply.
    let m4 = record(&*store, &mut s, "four", at(90_000)).await;
    assert_eq!(claim(90_000).await, Some(m4.clone()));
    assert!(store.delete_session(s.id, vec![]).await.unwrap());
    let r4 = agent_reply(&s, &m4, "re: four", at(90_001));
    assert!(!store.finish_reply(m4.id, Some(&r4), vec![]).await.unwrap());
    assert_eq!(claim(90_002).await, None);
}

/// A write whose second statement fails (a message reusing a stored message's id) reports the error and keeps
/// nothing of its first statement: the session stays at its version, and the claim stays open.
async fn a_write_failing_halfway_changes_nothing(store: Arc<dyn SessionStore>) {
    let mut s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
    insert(&*store, &s).await;
    let m = record(&*store, &mut s, "one", at(1_000)).await;

    let mut next = s.clone();
    next.version += 1;
    let clash = Message {
        id: m.id,
        ..user_message(&next, "again", at(2_000))
    };
    let recorded = store.record_message(&next, s.version, &clash, vec![]).await;
    assert!(recorded.is_err(), "{recorded:?}");
    assert_eq!(store.get_session(s.id).await.unwrap(), Some(s.clone()));
    assert!(
        touch(&*store, &mut s, at(3_000)).await,
        "still at its version"
    );

    assert_eq!(
        store.claim_reply(s.id, at(4_000), at(0)).await.unwrap(),
        Some(m.clone())
    );
    let clash = Message {
        id: m.id,
        ..agent_reply(&s, &m, "re: one", at(5_000))
    };
    let finished = store
        .finish_reply(m.id, Some(&clash), vec![SessionEvent::message(&clash)])
        .await;
    assert!(finished.is_err(), "{finished:?}");
    let reply = agent_reply(&s, &m, "re: one", at(6_000));
    assert!(
        store
            .finish_reply(m.id, Some(&reply), vec![SessionEvent::message(&reply)])
            .await
            .unwrap(),
        "the claim is still open"
    );
    let history = store
        .list_messages(s.id, MessageWindow::default(), Order::OldestFirst, 100)
        .await
        .unwrap();
    assert_eq!(ids(&history), vec![m.id, reply.id]);
    let kinds: Vec<EventKind> = store
        .events_after(s.id, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind())
        .collect();
    assert_eq!(
        kinds,
        vec![EventKind::Message, EventKind::Session, EventKind::Message]
    );
}

async fn unanswered_messages_are_counted(store: Arc<dyn SessionStore>) {
    let mut s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
    insert(&*store, &s).await;
    let other = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
    insert(&*store, &other).await;
    assert_eq!(store.count_unanswered(s.id).await.unwrap(), 0);
    let m1 = record(&*store, &mut s, "one", at(1_000)).await;
    record(&*store, &mut s, "two", at(2_000)).await;
    assert_eq!(store.count_unanswered(s.id).await.unwrap(), 2);
    // A claimed message still waits for its reply; an answered one does not.
    let claimed = store.claim_reply(s.id, at(3_000), at(0)).await.unwrap();
    assert_eq!(claimed.map(|m| m.id), Some(m1.id));
    assert_eq!(store.count_unanswered(s.id).await.unwrap(), 2);
    let reply = agent_reply(&s, &m1, "re: one", at(4_000));
    assert!(store
        .finish_reply(m1.id, Some(&reply), vec![])
        .await
        .unwrap());
    assert_eq!(store.count_unanswered(s.id).await.unwrap(), 1);
    assert_eq!(store.count_unanswered(other.id).await.unwrap(), 0);
}

/// Sessions inserted for an agent while it is deleted either count (and, expired, go with it) or are refused:
/// never is a session left whose agent is gone. Repeated, so that the race lands both ways.
async fn deleting_an_agent_leaves_no_orphans_under_racing_inserts(store: Arc<dyn SessionStore>) {
    for round in 0..5 {
        let agent = new_agent("contested", at(0));
        store.insert_agent(&agent).await.unwrap();
        let inserts = futures::future::join_all((0..20).map(|_| {
            let store = store.clone();
            let s = new_session(agent.id, Uuid::new_v4(), at(0));
            async move { (s.id, store.insert_session(&s).await.unwrap()) }
        }));
        // Deleted as of long after those sessions would have expired, so that only the race decides.
        let delete = store.delete_agent(agent.id, at(100 * 3_600_000));
        let (inserted, deleted) = tokio::join!(inserts, delete);
        assert_eq!(deleted.unwrap(), AgentDeletion::Deleted, "round {round}");
        assert_eq!(store.get_agent(agent.id).await.unwrap(), None);
        for (id, _) in &inserted {
            assert_eq!(
                store.get_session(*id).await.unwrap(),
                None,
                "round {round}: a session outlived its agent"
            );
        }
        let filter = SessionFilter {
            agent_id: Some(agent.id),
            user_id: None,
        };
        let left = store.count_sessions(&filter, at(0), at(-1)).await.unwrap();
        assert_eq!(left.total, 0, "round {round}");
    }
}

async fn quotas_are_counted(store: Arc<dyn SessionStore>) {
    let user = Uuid::new_v4();
    let agent = Uuid::new_v4();
    let mut live = new_session(agent, user, at(0));
    insert(&*store, &live).await;
    insert(&*store, &new_session(agent, user, at(0))).await;
    insert(&*store, &new_session(agent, Uuid::new_v4(), at(0))).await;
    assert_eq!(
        store
            .count_active_sessions_of_user(user, at(1))
            .await
            .unwrap(),
        2
    );
    let after_expiry = live.expires_at;
    assert_eq!(
        store
            .count_active_sessions_of_user(user, after_expiry)
            .await
            .unwrap(),
        0,
        "expired sessions do not count"
    );
    for i in 0..5 {
        record(&*store, &mut live, &format!("m{i}"), at(10 + i)).await;
    }
    assert_eq!(store.count_messages(live.id, 100).await.unwrap(), 5);
    assert_eq!(
        store.count_messages(live.id, 3).await.unwrap(),
        3,
        "counted no further"
    );
}

/// The first value stored wins, also when several callers race on an empty store.
async fn a_setting_is_written_once(store: Arc<dyn SessionStore>) {
    let racing = futures::future::join_all((0..8).map(|i| {
        let store = store.clone();
        async move {
            store
                .setting_or_insert("secret", &format!("v{i}"))
                .await
                .unwrap()
        }
    }))
    .await;
    assert!(racing.iter().all(|v| v == &racing[0]), "{racing:?}");
    assert_eq!(
        store.setting_or_insert("secret", "later").await.unwrap(),
        racing[0]
    );
    assert_eq!(store.setting_or_insert("other", "x").await.unwrap(), "x");
}

async fn concurrent_claims_take_a_message_once(store: Arc<dyn SessionStore>) {
    let mut s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
    insert(&*store, &s).await;
    let m1 = record(&*store, &mut s, "one", at(1_000)).await;
    record(&*store, &mut s, "two", at(1_000)).await;
    let winners = concurrent_claims(std::slice::from_ref(&store), s.id, 16).await;
    assert_eq!(winners, vec![m1]);
}

/// `n` simultaneous claims spread over `stores`; returns what they took.
async fn concurrent_claims(stores: &[Arc<dyn SessionStore>], id: Uuid, n: usize) -> Vec<Message> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            tokio::spawn(async move {
                store
                    .claim_reply(id, at(5_000), at(5_000 - 60_000))
                    .await
                    .expect("claim")
            })
        })
        .collect();
    let mut taken = Vec::new();
    for task in tasks {
        taken.extend(task.await.expect("claim task"));
    }
    taken
}

async fn chunks_reach_subscribers_before_the_stored_reply(store: Arc<dyn SessionStore>) {
    let mut s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
    insert(&*store, &s).await;
    let m = record(&*store, &mut s, "tell me", at(1_000)).await;
    let mut rx = store.subscribe(s.id);
    assert_eq!(
        store
            .claim_reply(s.id, at(2_000), at(0))
            .await
            .unwrap()
            .map(|c| c.id),
        Some(m.id)
    );
    let reply = agent_reply(&s, &m, "0123456789", at(3_000));
    let chunks: Vec<SessionEvent> = (0..10)
        .map(|i| SessionEvent::chunk(s.id, m.id, reply.id, &i.to_string(), i, at(2_500)))
        .collect();
    for chunk in &chunks {
        store.publish(chunk);
    }
    let stored = SessionEvent::message(&reply);
    assert!(store
        .finish_reply(m.id, Some(&reply), vec![stored.clone()])
        .await
        .unwrap());
    for chunk in &chunks {
        assert_eq!(&next_event(&mut rx).await, chunk);
    }
    let last = next_event(&mut rx).await;
    assert_eq!(last.kind(), EventKind::Message);
    assert_eq!(last.payload, stored.payload);
    assert!(last.seq.is_some());
}

/// Text that JSON escapes heavily: quotes, backslashes, control characters, and multi-byte characters.
fn awkward_text(len: usize) -> String {
    let pattern = "ab\"c\\d\ne\u{1}f\u{7f}g€h🙂i\tj";
    pattern.chars().cycle().take(len).collect()
}

async fn large_events_arrive_whole(store: Arc<dyn SessionStore>) {
    let mut s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
    insert(&*store, &s).await;
    let mut rx = store.subscribe(s.id);

    // A persisted event far over a NOTIFY payload.
    let m = record(&*store, &mut s, &awkward_text(20_000), at(1_000)).await;
    let event = next_event(&mut rx).await;
    assert_eq!(event.kind(), EventKind::Message);
    assert_eq!(event.payload, SessionEvent::message(&m).payload);
    assert_eq!(event, store.events_after(s.id, 0, 10).await.unwrap()[0]);

    // Transient events of every size around the limit, in order.
    let sizes = [1_000, 7_000, 7_990, 8_000, 8_100, 30_000, 100_000];
    let chunks: Vec<SessionEvent> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            SessionEvent::chunk(
                s.id,
                m.id,
                Uuid::new_v4(),
                &awkward_text(*n),
                i as u64,
                at(2_000),
            )
        })
        .collect();
    for chunk in &chunks {
        store.publish(chunk);
    }
    for chunk in &chunks {
        let got = next_event(&mut rx).await;
        assert_eq!(&got, chunk);
    }
    expect_marker_next(&*store, &mut rx, s.id).await;
    // Metadata is stored as given, whatever it holds.
    let mut big = s.clone();
    big.metadata
        .insert("blob".into(), Value::String(awkward_text(50_000)));
    big.version += 1;
    assert!(store
        .update_session(
            &big,
            s.version,
            vec![SessionEvent::session(
                &big,
                SessionChange::Renewed,
                at(3_000)
            )]
        )
        .await
        .unwrap());
    assert_eq!(store.get_session(s.id).await.unwrap(), Some(big.clone()));
    let event = next_event(&mut rx).await;
    let EventPayload::Session { session, .. } = event.payload else {
        panic!("not a session event: {event:?}")
    };
    assert_eq!(session.metadata["blob"], big.metadata["blob"]);
}

// ---------------------------------------------------------------------------------------------------------
// Several PostgreSQL stores on one database, as several server instances would be.

mod postgres_instances {
    use super::*;

    /// `n` stores on one fresh database, or None (skip) without a server.
    async fn instances(n: usize) -> Option<(String, Vec<Arc<dyn SessionStore>>)> {
        let Some(url) = postgres_url().await else {
            eprintln!("skipping PostgreSQL: no server");
            return None;
        };
        let mut stores = Vec::new();
        for _ in 0..n {
            stores.push(open_postgres(&url).await);
        }
        Some((url, stores))
    }

    async fn close_all(stores: Vec<Arc<dyn SessionStore>>) {
        for store in stores {
            store.close().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_starting_together_migrate_once() {
        let Some(url) = postgres_url().await else {
            eprintln!("skipping PostgreSQL: no server");
            return;
        };
        let opened = futures::future::join_all((0..3).map(|_| PostgresStore::open(&url))).await;
        let stores: Vec<Arc<dyn SessionStore>> = opened
            .into_iter()
            .map(|s| Arc::new(s.expect("every instance opens")) as Arc<dyn SessionStore>)
            .collect();
        let files = std::fs::read_dir(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("server/migrations/postgres"),
        )
        .expect("migrations dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
        let applied = psql(&url, "SELECT count(*) FROM _sqlx_migrations WHERE success")
            .await
            .expect("psql");
        assert_eq!(applied, files.to_string(), "each migration applied once");
        let agent = new_agent("shared", at(0));
        stores[0].insert_agent(&agent).await.unwrap();
        for store in &stores {
            assert_eq!(
                store.get_agent(agent.id).await.unwrap(),
                Some(agent.clone())
            );
        }
        close_all(stores).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_reach_subscribers_of_every_instance() {
        let Some((_, stores)) = instances(2).await else {
            return;
        };
        let (a, b) = (&stores[0], &stores[1]);
        let mut s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
        super::insert(&**a, &s).await;
        let mut on_a = a.subscribe(s.id);
        let mut on_b = b.subscribe(s.id);

        // Committed through A: B's subscriber gets it, and A's gets it once.
        assert!(touch(&**a, &mut s, at(1)).await);
        let seen_b = next_event(&mut on_b).await;
        let seen_a = next_event(&mut on_a).await;
        assert_eq!(seen_a, seen_b);
        assert!(seen_b.seq.is_some());
        expect_marker_next(&**a, &mut on_a, s.id).await;

        // Transient, through B: reaches A.
        let chunk = SessionEvent::chunk(s.id, Uuid::new_v4(), Uuid::new_v4(), "x", 0, at(2));
        b.publish(&chunk);
        assert_eq!(next_event(&mut on_a).await, chunk);

        // A message recorded on B and the reply stored on A, both seen on both, in order.
        let m = record(&**b, &mut s, "hello", at(3)).await;
        let claimed = a.claim_reply(s.id, at(4), at(0)).await.unwrap();
        assert_eq!(claimed.map(|c| c.id), Some(m.id));
        let reply = agent_reply(&s, &m, "hi there", at(5));
        assert!(a
            .finish_reply(m.id, Some(&reply), vec![SessionEvent::message(&reply)])
            .await
            .unwrap());
        for rx in [&mut on_a, &mut on_b] {
            // on_b has yet to take the marker and the chunk.
            let mut next = next_event(rx).await;
            while next.kind() == EventKind::Chunk {
                next = next_event(rx).await;
            }
            assert_eq!(next.payload, SessionEvent::message(&m).payload);
            let stored = next_event(rx).await.payload;
            assert_eq!(stored, SessionEvent::message(&reply).payload);
        }
        close_all(stores).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn version_checked_increments_across_instances_lose_nothing() {
        let Some((_, stores)) = instances(2).await else {
            return;
        };
        let s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
        super::insert(&*stores[0], &s).await;
        let mut on_b = stores[1].subscribe(s.id);
        version_checked_increments(&stores, s.id, 50).await;
        let stored = stores[1].get_session(s.id).await.unwrap().unwrap();
        assert_eq!(stored.renewal_count, 50);
        let events = stores[0].events_after(s.id, 0, 100).await.unwrap();
        assert_eq!(renewal_counts(&events), (1..=50).collect::<Vec<_>>());
        // Every instance's subscribers see all 50, in commit order.
        let mut received = Vec::new();
        for _ in 0..50 {
            received.push(next_event(&mut on_b).await);
        }
        assert_eq!(received, events);
        close_all(stores).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claims_across_instances_take_a_message_once() {
        let Some((_, stores)) = instances(2).await else {
            return;
        };
        let mut s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
        super::insert(&*stores[0], &s).await;
        let m1 = record(&*stores[0], &mut s, "one", at(1_000)).await;
        let m2 = record(&*stores[1], &mut s, "two", at(1_000)).await;
        assert_eq!(concurrent_claims(&stores, s.id, 20).await, vec![m1.clone()]);
        let r1 = agent_reply(&s, &m1, "re", at(2_000));
        assert!(stores[1]
            .finish_reply(m1.id, Some(&r1), vec![])
            .await
            .unwrap());
        assert_eq!(concurrent_claims(&stores, s.id, 20).await, vec![m2]);
        close_all(stores).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sweepers_of_several_instances_share_the_work() {
        let Some((_, stores)) = instances(2).await else {
            return;
        };
        let agent = Uuid::new_v4();
        for i in 0..40 {
            let mut s = session_expiring(agent, 0, 1_000 + i, 0);
            super::insert(&*stores[0], &s).await;
            record(&*stores[0], &mut s, "x", at(1)).await;
        }
        let live = session_expiring(agent, 0, 1_000_000, 0);
        super::insert(&*stores[0], &live).await;
        let sweeps: Vec<_> = stores
            .iter()
            .map(|store| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut purged = 0;
                    loop {
                        match store.purge_sessions(at(5_000), 3).await.expect("purge") {
                            0 => return purged,
                            n => purged += n,
                        }
                    }
                })
            })
            .collect();
        let mut total = 0;
        for sweep in sweeps {
            total += sweep.await.expect("sweep");
        }
        assert_eq!(total, 40);
        let left = stores[1]
            .count_sessions(&SessionFilter::default(), at(0), at(-1_000_000_000))
            .await
            .unwrap();
        assert_eq!(left.total, 1);
        close_all(stores).await;
    }

    /// The listener's connection is killed and an event is committed with no NOTIFY (straight into the
    /// table), so only the replay that follows the reconnect can deliver it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listener_replays_events_missed_while_disconnected() {
        let Some((url, stores)) = instances(1).await else {
            return;
        };
        let store = &stores[0];
        let mut s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
        super::insert(&**store, &s).await;
        let mut rx = store.subscribe(s.id);
        assert!(touch(&**store, &mut s, at(1)).await);
        let first = next_event(&mut rx).await;

        let mut behind = s.clone();
        behind.renewal_count = 7;
        let event = SessionEvent::session(&behind, SessionChange::Renewed, at(2));
        let data = event.stored_data().to_string().replace('\'', "''");
        let inserted = psql(
            &url,
            &format!(
                "INSERT INTO events (session_id, kind, data, created_at) \
                 VALUES ('{}', 'session', '{data}', 1735689600002) RETURNING seq",
                s.id
            ),
        )
        .await
        .expect("insert an event behind the store's back");
        let killed = psql(
            &url,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'LISTEN%'",
        )
        .await
        .expect("terminate the listener");
        assert_eq!(killed, "1", "one listener connection");

        let missed = next_event(&mut rx).await;
        assert_eq!(missed.seq.map(|s| s.to_string()), Some(inserted));
        assert!(missed.seq > first.seq);
        assert_eq!(missed.payload, event.payload);

        // And live delivery works again, without duplicates.
        assert!(touch(&**store, &mut s, at(3)).await);
        let live = next_event(&mut rx).await;
        assert!(live.seq > missed.seq);
        expect_marker_next(&**store, &mut rx, s.id).await;
        close_all(stores).await;
    }
}
