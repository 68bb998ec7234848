//! The queue outlives a server and is shared by servers: a restart on the same SQLite file while the receiver
//! is down loses no delivery, and two instances on one PostgreSQL database deliver each event once, in order
//! per session.

use std::sync::Arc;

use agent_sessions::types;
use agent_sessions_server::clock::MockClock;
use chrono::Duration;

use super::*;

const IN_ORDER: [&str; 5] = [
    "session.created",
    "message.created",
    "message.reply",
    "message.created",
    "message.reply",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loses_no_delivery() {
    let ctx = TestContext::new().await;
    let mut receiver = Receiver::start(ctx.clock.clone()).await;
    receiver.answer(Answering::Unavailable);
    register(&ctx, &receiver, None).await;
    let s = ctx.create_session(None).await;
    for text in ["before", "the restart"] {
        ctx.send(s.session_id, text, types::TransportType::Http)
            .await;
    }
    let first = receiver.next().await;
    assert_eq!(
        (first.kind().as_str(), first.status),
        ("session.created", 503)
    );

    let (dir, db, clock) = ctx.stop().await;
    let ctx = TestContext::start(dir, db, clock, TestOptions::default()).await;
    receiver.answer(Answering::Ok);
    advance(&ctx, Duration::seconds(5));
    let mut received = vec![first];
    received.extend(receiver.until_delivered(5).await);
    // And what happens after the restart comes after.
    ctx.delete(s.session_id).await;
    received.extend(receiver.until_delivered(1).await);
    assert_eq!(assert_once_each(&received), 6);
    let mut expected = IN_ORDER.to_vec();
    expected.push("session.deleted");
    assert_eq!(
        delivered_by_session(&received)[&s.session_id.to_string()],
        expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_deliver_each_event_once() {
    let Some(url) = crate::pg::postgres_url().await else {
        eprintln!("skipping: no PostgreSQL server");
        return;
    };
    let clock = Arc::new(MockClock::default());
    let a = TestContext::on_url(&url, clock.clone(), TestOptions::default()).await;
    let b = TestContext::on_url(&url, clock.clone(), TestOptions::default()).await;
    let mut receiver = Receiver::start(clock.clone()).await;
    // Down first, so that both dispatchers find the same heads due at once when it comes back.
    receiver.answer(Answering::Unavailable);
    register(&a, &receiver, None).await;
    let instances = [&a, &b];
    let mut sessions = Vec::new();
    for i in 0..4 {
        let s = instances[i % 2].create_session(None).await;
        for n in 0..2 {
            let on = instances[(i + n + 1) % 2];
            on.send(
                s.session_id,
                &format!("message {n}"),
                types::TransportType::Http,
            )
            .await;
        }
        sessions.push(s.session_id.to_string());
    }
    let mut received = Vec::new();
    for _ in 0..4 {
        let r = receiver.next().await;
        assert_eq!((r.kind().as_str(), r.status), ("session.created", 503));
        received.push(r);
    }
    receiver.answer(Answering::Ok);
    clock.advance(Duration::seconds(5));
    a.wake_webhooks();
    b.wake_webhooks();
    received.extend(receiver.until_delivered(20).await);
    assert_eq!(assert_once_each(&received), 20);
    let by_session = delivered_by_session(&received);
    for s in &sessions {
        assert_eq!(by_session[s], IN_ORDER, "session {s}");
    }
    // A delivery is claimed by one instance at a time: no event reached the receiver twice while it was down
    // either, and none more than once after.
    let attempts: std::collections::HashMap<&str, usize> =
        received.iter().fold(Default::default(), |mut n, r| {
            *n.entry(r.id.as_str()).or_default() += 1;
            n
        });
    assert!(attempts.values().all(|&n| n <= 2), "{attempts:?}");
    assert_eq!(attempts.values().filter(|&&n| n == 2).count(), 4);
}
