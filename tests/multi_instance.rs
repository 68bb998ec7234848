//! Two real server instances on one PostgreSQL database, as behind a load balancer: every request may land on
//! either, and the API must behave exactly as with one instance (issue: several instances on one database).

use std::sync::Arc;

use agent_sessions::streams::SessionEvent;
use agent_sessions::types;
use agent_sessions_server::clock::MockClock;
use uuid::Uuid;

use crate::support::*;

/// Instance A and instance B on one fresh database, sharing one clock; None when no PostgreSQL can be had
/// (the harness fails instead when PostgreSQL tests are required).
async fn two_instances() -> Option<(TestContext, TestContext)> {
    let Some(url) = crate::pg::postgres_url().await else {
        eprintln!("skipping multi-instance test: no PostgreSQL server");
        return None;
    };
    let clock = Arc::new(MockClock::default());
    let a = TestContext::on_url(&url, clock.clone(), TestOptions::default()).await;
    let b = TestContext::on_url(&url, clock, TestOptions::default()).await;
    assert_eq!(a.agent_id, b.agent_id, "one demo agent for both");
    Some((a, b))
}

#[tokio::test]
async fn a_session_works_the_same_on_either_instance() {
    let Some((a, b)) = two_instances().await else {
        return;
    };
    let mut s = a.create_session(None).await;
    // Only createSession carries a token.
    assert!(s.session_token.take().is_some());
    s.session_token_expires_at = None;
    let id = s.session_id.to_string();
    let got = b.get(&id).await;
    assert_eq!(got, s);

    a.advance_minutes(1);
    let renewed = b.renew(&id).await;
    assert_eq!(renewed.renewal_count, 1);
    let patched = a.update_timeout(&id, timeout_minutes(90.0)).await;
    assert_eq!(patched.timeout_config.timeout_minutes, 90.0);
    assert_eq!(patched.renewal_count, 1);
    let sent = b
        .send(&id, "hello from b", types::TransportType::Http)
        .await;
    assert_eq!(sent.agent_response.unwrap().text, "Echo: hello from b");
    let history = a.history_page(&id).await;
    assert_eq!(history.messages.len(), 2);
    assert_eq!(history.messages[0].content, "Echo: hello from b");
    let on_a = a.get(&id).await;
    assert_eq!(on_a.timeout_config.timeout_minutes, 90.0);
    assert_eq!(on_a.renewal_count, 2, "the message renewed it too");

    b.delete(&id).await;
    let (status, _, _) = api_error(a.try_get(&id).await);
    assert_eq!(status, 404);
}

#[tokio::test]
async fn fifty_concurrent_heartbeats_over_both_instances_count_fifty() {
    let Some((a, b)) = two_instances().await else {
        return;
    };
    let id = a.new_session_id(None).await;
    // Every heartbeat succeeds (`heartbeat` panics otherwise).
    futures::future::join_all((0..50).map(|i| [&a, &b][i % 2].heartbeat(&id))).await;
    let got = b.get(&id).await;
    assert_eq!(got.renewal_count, 50);
}

#[tokio::test]
async fn a_subscriber_on_one_instance_sees_a_reply_produced_on_the_other() {
    let Some((a, b)) = two_instances().await else {
        return;
    };
    let id = a.new_session_id(None).await;
    let mut on_b = b.events(&id).await;
    let sent = a
        .send(&id, "over to you", types::TransportType::Websocket)
        .await;
    let mut seen = Vec::new();
    let reply = loop {
        let frame = next(&mut on_b).await;
        if let SessionEvent::Message(m) = &frame.event {
            if m.is_agent {
                break m.clone();
            }
        }
        seen.push(frame);
    };
    assert_eq!(reply.content, "Echo: over to you");
    assert_eq!(reply.in_reply_to, Some(sent.user_message.id));
    assert!(matches!(&seen[0].event, SessionEvent::Message(m) if m.id == sent.user_message.id));
    assert!(
        seen.iter()
            .any(|f| matches!(f.event, SessionEvent::Chunk(_))),
        "chunks cross instances too"
    );

    // Resuming on the other instance replays from the stored log.
    let first_id = seen[0].id.expect("stored events have ids");
    let mut on_a = a.client.session_events(&id, Some(first_id)).await.unwrap();
    let replayed = next(&mut on_a).await;
    assert!(replayed.id.unwrap() > first_id);
}

#[tokio::test]
async fn replies_keep_message_order_across_instances() {
    let Some((a, b)) = two_instances().await else {
        return;
    };
    let id = a.new_session_id(None).await;
    let sends = (0..20).map(|i| {
        let (instance, id) = ([&a, &b][i % 2], &id);
        async move {
            let content = format!("m{i}");
            let sent = instance
                .send(id, &content, types::TransportType::Http)
                .await;
            assert_eq!(sent.agent_response.unwrap().text, format!("Echo: m{i}"));
        }
    });
    futures::future::join_all(sends).await;
    let all = a.history(&id).await;
    assert_eq!(all.len(), 40);
    // Replies are stored in the order of the messages they answer, each after its message (other messages may
    // be stored in between: they arrive while earlier replies are being produced).
    let asked: Vec<Uuid> = all.iter().filter(|m| !m.is_agent).map(|m| m.id).collect();
    let answered: Vec<Uuid> = all.iter().filter_map(|m| m.in_reply_to).collect();
    assert_eq!(answered, asked);
    for (i, m) in all.iter().enumerate().filter(|(_, m)| m.is_agent) {
        let question = all
            .iter()
            .position(|q| Some(q.id) == m.in_reply_to)
            .unwrap();
        assert!(question < i);
        assert_eq!(m.content, format!("Echo: {}", all[question].content));
    }
}

#[tokio::test]
async fn two_sweepers_announce_and_purge_each_session_once() {
    let Some((a, b)) = two_instances().await else {
        return;
    };
    let (sweeper_a, sweeper_b) = (a.sweeper(), b.sweeper());
    let mut ids: Vec<Uuid> = Vec::new();
    for _ in 0..30 {
        ids.push(
            a.create_session(Some(timeout_minutes(10.0)))
                .await
                .session_id,
        );
    }
    a.advance_minutes(6);
    let (ra, rb) = tokio::join!(
        sweeper_a.run_once(a.service.now()),
        sweeper_b.run_once(b.service.now())
    );
    assert_eq!(
        ra.unwrap().announced + rb.unwrap().announced,
        30,
        "each warning once"
    );
    a.advance_minutes(60 * 24 + 10);
    let (ra, rb) = tokio::join!(
        sweeper_a.run_once(a.service.now()),
        sweeper_b.run_once(b.service.now())
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.announced + rb.announced, 30, "each expiry once");
    assert_eq!(ra.purged + rb.purged, 30, "each purge once");
    for id in ids {
        assert!(a.store.get_session(id).await.unwrap().is_none());
    }
}
