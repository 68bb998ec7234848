//! Conformance checks of sessions and agents: round trips, version-checked updates, filters and pages, counts,
//! purges, notices, deletion, atomic failed writes, quotas and settings.

use super::*;

pub(super) async fn agents_insert_get_list_delete(store: Arc<dyn SessionStore>) {
    let mut first = new_agent("first", at(0));
    first.backend = AgentBackend::OpenAi(OpenAiBackend {
        base_url: "http://127.0.0.1:1/v1".into(),
        model: "m".into(),
        api_key_env: Some("KEY".into()),
        system_prompt: None,
    });
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
pub(super) async fn reads_see_every_acknowledged_write(store: Arc<dyn SessionStore>) {
    let s = stored_session(&*store).await;
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

pub(super) async fn sessions_round_trip_and_update_with_version_check(
    store: Arc<dyn SessionStore>,
) {
    let mut s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
    s.timeout.timeout_minutes = 0.25;
    s.expires_at = s.compute_expires_at();
    std::sync::Arc::make_mut(&mut s.metadata).insert(
        "nested".into(),
        json!({"a": [1, 2.5, "x\u{0}y"], "b": null}),
    );
    insert(&*store, &s).await;
    assert_eq!(store.get_session(s.id).await.unwrap(), Some(s.clone()));
    assert_eq!(store.get_session(Uuid::new_v4()).await.unwrap(), None);

    let mut next = s.clone();
    assert!(next.record_activity(at(5_000)));
    next.notice = Notice::Warned;
    std::sync::Arc::make_mut(&mut next.metadata).insert("k".into(), json!(1));
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

pub(super) async fn concurrent_version_checked_increments_lose_nothing(
    store: Arc<dyn SessionStore>,
) {
    let s = stored_session(&*store).await;
    version_checked_increments(std::slice::from_ref(&store), s.id, 50).await;
    let stored = store.get_session(s.id).await.unwrap().unwrap();
    assert_eq!(stored.renewal_count, 50);
    assert_eq!(stored.version, 50);
    // One event per successful update, and their seq order is the order of the updates.
    let events = store.events_after(s.id, 0, 100).await.unwrap();
    assert_eq!(renewal_counts(&events), (1..=50).collect::<Vec<_>>());
}

pub(super) async fn active_sessions_filter_order_and_page(store: Arc<dyn SessionStore>) {
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

pub(super) async fn session_counts(store: Arc<dyn SessionStore>) {
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
    let by_user = SessionFilter {
        agent_id: None,
        user_id: Some(calm.user_id),
    };
    // (filter, total, active, expiring soon)
    for (filter, total, active, expiring_soon) in [
        (by_agent, 3, 2, 1),
        (SessionFilter::default(), 4, 3, 2),
        (by_user, 1, 1, 0),
    ] {
        let counts = store
            .count_sessions(&filter, at(now), at(now - retention))
            .await
            .unwrap();
        let expected = SessionCounts {
            total,
            active,
            expiring_soon,
        };
        assert_eq!(counts, expected, "{filter:?}");
    }
}

pub(super) async fn purge_in_batches_takes_messages_and_events(store: Arc<dyn SessionStore>) {
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

pub(super) async fn sessions_due_notice(store: Arc<dyn SessionStore>) {
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

pub(super) async fn delete_session_removes_everything_and_announces(store: Arc<dyn SessionStore>) {
    let mut s = stored_session(&*store).await;
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

/// A write whose second statement fails (a message reusing a stored message's id) reports the error and keeps
/// nothing of its first statement: the session stays at its version, and the claim stays open.
pub(super) async fn a_write_failing_halfway_changes_nothing(store: Arc<dyn SessionStore>) {
    let mut s = stored_session(&*store).await;
    let m = record(&*store, &mut s, "one", at(1_000)).await;

    let mut next = s.clone();
    next.version += 1;
    let clash = Message {
        id: m.id,
        ..user_message(&next, "again", at(2_000))
    };
    let recorded = store
        .record_message(&next, s.version, &clash, vec![], None)
        .await;
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

/// Sessions inserted for an agent while it is deleted either count (and, expired, go with it) or are refused:
/// never is a session left whose agent is gone. Repeated, so that the race lands both ways.
pub(super) async fn deleting_an_agent_leaves_no_orphans_under_racing_inserts(
    store: Arc<dyn SessionStore>,
) {
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

pub(super) async fn quotas_are_counted(store: Arc<dyn SessionStore>) {
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
pub(super) async fn a_setting_is_written_once(store: Arc<dyn SessionStore>) {
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

/// Socket.IO clients name a session by its channel: the lookup finds exactly that session, and nothing for a
/// channel that is no session's.
pub(super) async fn sessions_are_found_by_channel(store: Arc<dyn SessionStore>) {
    let one = stored_session(&*store).await;
    let two = stored_session(&*store).await;
    for s in [&one, &two] {
        let found = store.session_by_channel(s.channel_id).await.unwrap();
        assert_eq!(found.as_ref(), Some(s));
    }
    assert_eq!(store.session_by_channel(one.id).await.unwrap(), None);
    assert_eq!(
        store.session_by_channel(Uuid::new_v4()).await.unwrap(),
        None
    );
}
