//! Conformance checks of events: persisted replay after an id, live delivery in commit order, transient chunks
//! before their stored reply, and events too large for one notification arriving whole.

use super::*;

pub(super) async fn events_after_returns_persisted_events_only(store: Arc<dyn SessionStore>) {
    let s = stored_session(&*store).await;
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

pub(super) async fn subscribers_get_committed_events_in_commit_order(store: Arc<dyn SessionStore>) {
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

pub(super) async fn chunks_reach_subscribers_before_the_stored_reply(store: Arc<dyn SessionStore>) {
    let mut s = stored_session(&*store).await;
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

pub(super) async fn large_events_arrive_whole(store: Arc<dyn SessionStore>) {
    let mut s = stored_session(&*store).await;
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
    std::sync::Arc::make_mut(&mut big.metadata)
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

/// Run on stores that keep 3 events per session (`KEPT`): each session's log keeps its newest events whatever
/// the write that adds them, other sessions' logs are untouched, and a replay says how far the log was pruned,
/// read with the events it returns.
pub(super) async fn event_logs_keep_their_newest_events(store: Arc<dyn SessionStore>) {
    let mut s = stored_session(&*store).await;
    let mut other = stored_session(&*store).await;
    assert!(touch(&*store, &mut other, at(1)).await);
    for i in 0..5 {
        assert!(touch(&*store, &mut s, at(10 + i)).await);
    }
    // Two events in one write.
    let mut next = s.clone();
    next.version += 1;
    let events = vec![
        SessionEvent::session(&next, SessionChange::TimeoutUpdated, at(20)),
        SessionEvent::warning(&next, at(20)),
    ];
    assert!(store
        .update_session(&next, s.version, events)
        .await
        .unwrap());

    let all = store.replay_events(s.id, 0, 100).await.unwrap();
    let kinds: Vec<EventKind> = all.events.iter().map(SessionEvent::kind).collect();
    assert_eq!(
        kinds,
        [EventKind::Session, EventKind::Session, EventKind::Warning],
        "the newest {KEPT} of 7 events"
    );
    let times: Vec<_> = all.events.iter().map(|e| e.at).collect();
    assert_eq!(
        times,
        [at(14), at(20), at(20)],
        "the fifth renewal is the oldest kept"
    );
    let seqs: Vec<i64> = all.events.iter().map(|e| e.seq.expect("seq")).collect();
    // Pruned: the first four renewals, the last of them just below the oldest kept (no other session wrote
    // in between).
    assert!(all.pruned_through > 0 && all.pruned_through < seqs[0]);
    let resumed = store
        .replay_events(s.id, all.pruned_through, 100)
        .await
        .unwrap();
    assert_eq!(
        resumed.events, all.events,
        "a client that has the last pruned one misses nothing"
    );
    assert_eq!(resumed.pruned_through, all.pruned_through);
    let tail = store.replay_events(s.id, seqs[1], 100).await.unwrap();
    assert_eq!(tail.events, all.events[2..]);

    // The other session's log is whole.
    let others = store.replay_events(other.id, 0, 100).await.unwrap();
    assert_eq!((others.events.len(), others.pruned_through), (1, 0));
    assert_eq!(
        store.replay_events(Uuid::new_v4(), 0, 100).await.unwrap(),
        Default::default()
    );

    // Deleting the session still takes its whole log.
    assert!(store.delete_session(s.id, Vec::new()).await.unwrap());
    assert!(store.events_after(s.id, 0, 100).await.unwrap().is_empty());
}
