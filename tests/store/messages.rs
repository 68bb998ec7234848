//! Conformance checks of messages: recording, replies, listing windows, claims of unanswered messages.

use super::*;

pub(super) async fn messages_record_reply_list_and_recent(store: Arc<dyn SessionStore>) {
    let mut s = stored_session(&*store).await;
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
            None,
        )
        .await
        .unwrap();
    assert!(outcome.is_none());
    assert_eq!(store.get_session(s.id).await.unwrap(), Some(s.clone()));

    let mut reply = agent_reply(&s, &m3, "answer", at(3_000));
    std::sync::Arc::make_mut(&mut reply.metadata).insert("thought".into(), json!("hmm"));
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

    // A listing after each later write sees it (a store that keeps listings must drop or update them).
    let m4 = record(&*store, &mut s, "four", at(4_000)).await;
    let newest = store
        .list_messages(s.id, all, Order::NewestFirst, 2)
        .await
        .unwrap();
    assert_eq!(ids(&newest), vec![m4.id, reply.id], "after a message");
    let answer = agent_reply(&s, &m4, "answer four", at(5_000));
    assert!(store.insert_reply(&answer, vec![]).await.unwrap());
    let newest = store
        .list_messages(s.id, all, Order::NewestFirst, 1)
        .await
        .unwrap();
    assert_eq!(ids(&newest), vec![answer.id], "after a reply");
    assert!(store.delete_session(s.id, vec![]).await.unwrap());
    assert!(store
        .list_messages(s.id, all, Order::NewestFirst, 10)
        .await
        .unwrap()
        .is_empty());
}

pub(super) async fn replies_are_claimed_one_at_a_time_in_order(store: Arc<dyn SessionStore>) {
    let mut s = stored_session(&*store).await;
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

/// A message recorded with a claim takes the session's next reply in the same write: itself when nothing waits
/// before it, nothing while another claim is live, and the older pending message first.
pub(super) async fn a_recorded_message_claims_its_reply_with_it(store: Arc<dyn SessionStore>) {
    let mut s = stored_session(&*store).await;
    let lease = 60_000;
    let record_claiming = |s: &mut Session, content: &str, now: i64| {
        let mut next = s.clone();
        next.version += 1;
        let mut m = user_message(&next, content, at(now));
        let version = s.version;
        *s = next.clone();
        let store = store.clone();
        async move {
            let claim = ClaimAt {
                now: at(now),
                stale_before: at(now - lease),
            };
            let recorded = store
                .record_message(&next, version, &m, vec![], Some(claim))
                .await
                .unwrap()
                .expect("session at the expected version");
            m.seq = recorded.seq;
            (m, recorded.claimed)
        }
    };
    let (m1, claimed) = record_claiming(&mut s, "one", 1_000).await;
    assert_eq!(
        claimed,
        Some(m1.clone()),
        "nothing before it: its own reply"
    );
    let (m2, claimed) = record_claiming(&mut s, "two", 2_000).await;
    assert_eq!(claimed, None, "the first one's claim is live");
    assert_eq!(
        store
            .claim_reply(s.id, at(2_001), at(2_001 - lease))
            .await
            .unwrap(),
        None
    );
    let r1 = agent_reply(&s, &m1, "re: one", at(3_000));
    assert!(store.finish_reply(m1.id, Some(&r1), vec![]).await.unwrap());
    let (_m3, claimed) = record_claiming(&mut s, "three", 4_000).await;
    assert_eq!(claimed, Some(m2), "the older pending message first");
    // A stale version records nothing and claims nothing.
    let mut stale = s.clone();
    stale.version += 1;
    let lost = user_message(&stale, "lost", at(5_000));
    let claim = ClaimAt {
        now: at(5_000),
        stale_before: at(5_000 - lease),
    };
    let outcome = store
        .record_message(&stale, s.version - 1, &lost, vec![], Some(claim))
        .await
        .unwrap();
    assert!(outcome.is_none());
    // A message claimed as it is stored carries its claim's time: live until the lease ends, then taken over.
    let mut fresh = stored_session(&*store).await;
    let (m, claimed) = record_claiming(&mut fresh, "again", 10_000).await;
    assert_eq!(claimed, Some(m.clone()));
    let claim_at = |now: i64| store.claim_reply(fresh.id, at(now), at(now - lease));
    assert_eq!(claim_at(9_999 + lease).await.unwrap(), None, "still live");
    assert_eq!(claim_at(10_000 + lease).await.unwrap(), Some(m), "stale");
}

pub(super) async fn unanswered_messages_are_counted(store: Arc<dyn SessionStore>) {
    let mut s = stored_session(&*store).await;
    let other = stored_session(&*store).await;
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

pub(super) async fn concurrent_claims_take_a_message_once(store: Arc<dyn SessionStore>) {
    let mut s = stored_session(&*store).await;
    let m1 = record(&*store, &mut s, "one", at(1_000)).await;
    record(&*store, &mut s, "two", at(1_000)).await;
    let winners = concurrent_claims(std::slice::from_ref(&store), s.id, 16).await;
    assert_eq!(winners, vec![m1]);
}
