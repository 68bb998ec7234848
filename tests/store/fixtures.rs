//! Fixtures of the store conformance suite: domain values to store, writes through the store's API, and waits
//! on its event subscriptions (with a timeout; "nothing else arrived" is a marker event arriving next).

use super::*;

pub(super) fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_735_689_600, 0).expect("t0")
}

/// `t0` plus `ms` milliseconds.
pub(super) fn at(ms: i64) -> DateTime<Utc> {
    t0() + Duration::milliseconds(ms)
}

pub(super) fn config(timeout_minutes: f64, warning_threshold_minutes: f64) -> TimeoutConfig {
    TimeoutConfig {
        timeout_minutes,
        auto_renew: true,
        max_duration_minutes: 720.0,
        warning_threshold_minutes,
    }
}

pub(super) fn new_agent(name: &str, created_at: DateTime<Utc>) -> Agent {
    Agent {
        id: Uuid::new_v4(),
        name: name.to_string(),
        backend: AgentBackend::Echo,
        session_defaults: TimeoutConfigPatch::default(),
        created_at,
    }
}

/// A 30-minute session (warning 5 minutes before expiry) created at `created_at`.
pub(super) fn new_session(agent_id: Uuid, user_id: Uuid, created_at: DateTime<Utc>) -> Session {
    let mut metadata = Map::new();
    metadata.insert("plan".into(), json!("pro"));
    Session::new(agent_id, user_id, metadata, config(30.0, 5.0), created_at)
}

/// A session expiring at `expires_at` (`t0`-relative ms), warned `warn_ms` before.
pub(super) fn session_expiring(
    agent_id: Uuid,
    created_ms: i64,
    expires_ms: i64,
    warn_ms: i64,
) -> Session {
    let mut s = new_session(agent_id, Uuid::new_v4(), at(created_ms));
    s.timeout.warning_threshold_minutes = warn_ms as f64 / 60_000.0;
    s.expires_at = at(expires_ms);
    s
}

pub(super) fn user_message(s: &Session, content: &str, created_at: DateTime<Utc>) -> Message {
    Message {
        id: Uuid::new_v4(),
        seq: 0,
        session_id: s.id,
        author_id: s.user_id,
        is_agent: false,
        content: content.to_string(),
        metadata: Default::default(),
        attachments: None,
        in_reply_to: None,
        created_at,
    }
}

pub(super) fn agent_reply(
    s: &Session,
    to: &Message,
    content: &str,
    created_at: DateTime<Utc>,
) -> Message {
    Message {
        id: Uuid::new_v4(),
        seq: 0,
        session_id: s.id,
        author_id: s.agent_id,
        is_agent: true,
        content: content.to_string(),
        metadata: Default::default(),
        attachments: None,
        in_reply_to: Some(to.id),
        created_at,
    }
}

/// Records a user message with a `message` event, bumping the session's version (and nothing else, so that
/// its expiry stays where a test put it); returns it with its seq, and moves `s` to the stored state.
pub(super) async fn record(
    store: &dyn SessionStore,
    s: &mut Session,
    content: &str,
    created_at: DateTime<Utc>,
) -> Message {
    let mut next = s.clone();
    next.version += 1;
    let mut m = user_message(&next, content, created_at);
    let seq = store
        .record_message(&next, s.version, &m, vec![SessionEvent::message(&m)], None)
        .await
        .expect("record_message")
        .expect("session at the expected version")
        .seq;
    m.seq = seq;
    *s = next;
    m
}

/// Stores `s`, with an agent of its `agent_id` first if the store has none (sessions are only stored for agents
/// that exist).
/// A new session of a random agent and user, created at `t0` and stored.
pub(super) async fn stored_session(store: &dyn SessionStore) -> Session {
    let s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
    insert(store, &s).await;
    s
}

pub(super) async fn insert(store: &dyn SessionStore, s: &Session) {
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
pub(super) async fn touch(store: &dyn SessionStore, s: &mut Session, now: DateTime<Utc>) -> bool {
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

pub(super) async fn next_event(rx: &mut LiveEvents) -> SessionEvent {
    let event = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an event within the wait")
        .expect("the event feed is open");
    Arc::unwrap_or_clone(event)
}

/// A transient event that proves, by arriving next, that nothing else was delivered before it.
pub(super) fn marker(session_id: Uuid) -> SessionEvent {
    SessionEvent::chunk(
        session_id,
        Uuid::nil(),
        Uuid::nil(),
        "marker",
        u64::MAX >> 12,
        at(0),
    )
}

pub(super) async fn expect_marker_next(
    store: &dyn SessionStore,
    rx: &mut LiveEvents,
    session_id: Uuid,
) {
    let m = marker(session_id);
    store.publish(&m);
    assert_eq!(next_event(rx).await, m, "an unexpected event came first");
}

pub(super) fn ids(messages: &[Message]) -> Vec<Uuid> {
    messages.iter().map(|m| m.id).collect()
}

pub(super) fn session_ids(sessions: &[Session]) -> Vec<Uuid> {
    sessions.iter().map(|s| s.id).collect()
}

/// `n` read-modify-write increments of `renewal_count`, spread over `stores`, each retried until its version
/// check passes; each success stores a `session` event.
pub(super) async fn version_checked_increments(
    stores: &[Arc<dyn SessionStore>],
    id: Uuid,
    n: usize,
) {
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
pub(super) fn renewal_counts(events: &[SessionEvent]) -> Vec<i64> {
    events
        .iter()
        .map(|e| match &e.payload {
            EventPayload::Session { session, .. } => session.renewal_count,
            other => panic!("not a session event: {other:?}"),
        })
        .collect()
}

/// `n` simultaneous claims spread over `stores`; returns what they took.
pub(super) async fn concurrent_claims(
    stores: &[Arc<dyn SessionStore>],
    id: Uuid,
    n: usize,
) -> Vec<Message> {
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

/// Text that JSON escapes heavily: quotes, backslashes, control characters, and multi-byte characters.
pub(super) fn awkward_text(len: usize) -> String {
    let pattern = "ab\"c\\d\ne\u{1}f\u{7f}g€h🙂i\tj";
    pattern.chars().cycle().take(len).collect()
}
