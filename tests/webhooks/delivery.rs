//! Deliveries to a real receiver: every event type with its documented body and a signature the SDK verifies,
//! filters, a receiver that answers 503 and then refuses connections for a while (every event still arrives,
//! in order per session, once), a delivery given up on, and a deleted webhook's queue.

use agent_sessions::types;
use agent_sessions_server::domain::RetryPolicy;
use agent_sessions_server::store::DeliveryCounts;
use agent_sessions_server::webhooks::WebhookSettings;
use chrono::Duration;
use serde_json::Value;

use super::*;

fn data<T: serde::de::DeserializeOwned>(r: &Received) -> T {
    serde_json::from_value(Value::Object(r.delivery().data)).expect("data of the documented schema")
}

/// Waits until the queue holds `counts`: the receiver answered before the dispatcher recorded it.
async fn drained(ctx: &TestContext, counts: DeliveryCounts) {
    let store = ctx.store.clone();
    eventually(ctx, &format!("the queue holds {counts:?}"), || {
        let store = store.clone();
        async move { store.delivery_counts().await.unwrap() == counts }
    })
    .await;
}

/// Every delivery's body matches the contract: `WebhookDelivery`, with the `data` schema its type lists.
fn assert_documented(r: &Received) {
    let delivery = r.delivery();
    assert_eq!(delivery.id.to_string(), r.id);
    match delivery.type_ {
        types::WebhookEventType::SessionCreated => drop(data::<types::WebhookSessionCreated>(r)),
        types::WebhookEventType::MessageCreated | types::WebhookEventType::MessageReply => {
            drop(data::<types::WebhookMessage>(r))
        }
        types::WebhookEventType::SessionWarning => drop(data::<types::ExpiryWarning>(r)),
        types::WebhookEventType::SessionExpired => drop(data::<types::SessionExpired>(r)),
        types::WebhookEventType::SessionDeleted => drop(data::<types::SessionDeleted>(r)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_arrives_signed_with_its_documented_body() {
    let ctx = TestContext::new().await;
    let mut all = Receiver::start(ctx.clock.clone()).await;
    let mut some = Receiver::start(ctx.clock.clone()).await;
    register(&ctx, &all, None).await;
    use types::WebhookEventType::{MessageReply, SessionDeleted};
    register(&ctx, &some, Some(&[SessionDeleted, MessageReply])).await;

    // One session through its whole life: created, a message and its reply, the warning, the expiry. The clock
    // moves only once what was sent so far has arrived: a jump past the lease of a delivery still in flight
    // would let it be claimed (and sent) again, which at-least-once allows but this test counts.
    let s1 = ctx.create_session(None).await;
    ctx.send(s1.session_id, "hello", types::TransportType::Http)
        .await;
    let mut received = all.until_delivered(3).await;
    drained(&ctx, DeliveryCounts::default()).await;
    let history = ctx.history(s1.session_id).await;
    let sweeper = ctx.sweeper();
    ctx.advance_minutes(26);
    assert_eq!(
        sweeper.run_once(ctx.service.now()).await.unwrap().announced,
        1
    );
    received.extend(all.until_delivered(1).await);
    drained(&ctx, DeliveryCounts::default()).await;
    ctx.advance_minutes(5);
    assert_eq!(
        sweeper.run_once(ctx.service.now()).await.unwrap().announced,
        1
    );
    // Another one, deleted.
    let s2 = ctx.create_session(None).await;
    ctx.delete(s2.session_id).await;
    received.extend(all.until_delivered(3).await);

    assert_eq!(assert_once_each(&received), 7);
    assert!(received.iter().all(|r| r.status == 200));
    let by_session = delivered_by_session(&received);
    assert_eq!(
        by_session[&s1.session_id.to_string()],
        [
            "session.created",
            "message.created",
            "message.reply",
            "session.warning",
            "session.expired"
        ]
    );
    assert_eq!(
        by_session[&s2.session_id.to_string()],
        ["session.created", "session.deleted"]
    );
    for r in &received {
        assert_documented(r);
        assert!(
            r.user_agent.starts_with("agent-sessions-webhooks/"),
            "{}",
            r.user_agent
        );
    }
    let of = |kind: &str| received.iter().find(|r| r.kind() == kind).unwrap();
    let created: types::WebhookSessionCreated = data(of("session.created"));
    assert_eq!(created.session_id, s1.session_id);
    assert_eq!(created.agent_id, ctx.agent_id);
    assert_eq!(created.timeout_config, s1.timeout_config);
    let sent: types::WebhookMessage = data(of("message.created"));
    assert_eq!(
        (sent.message.content.as_str(), sent.message.is_agent),
        ("hello", false)
    );
    let reply: types::WebhookMessage = data(of("message.reply"));
    assert_eq!(reply.message.content, "Echo: hello");
    assert_eq!(reply.message.in_reply_to, Some(sent.message.id));
    assert_eq!(
        [sent.message.clone(), reply.message.clone()],
        [history[0].clone(), history[1].clone()],
        "messages arrive as the history shows them"
    );
    let warning: types::ExpiryWarning = data(of("session.warning"));
    assert_eq!(warning.time_remaining, 4 * 60_000);
    // The body's timestamp is the event's; the header's is the attempt's.
    let expired = of("session.expired");
    assert_eq!(
        expired.delivery().timestamp,
        s1.created_at + Duration::minutes(31)
    );
    assert_eq!(expired.timestamp, ctx.clock.now().timestamp().to_string());

    // The filtered webhook got only its types, under the same event ids.
    let filtered = some.until_delivered(2).await;
    assert_once_each(&filtered);
    let kinds: Vec<String> = filtered.iter().map(Received::kind).collect();
    assert_eq!(kinds, ["message.reply", "session.deleted"]);
    for r in &filtered {
        assert!(received.iter().any(|a| a.id == r.id && a.body == r.body));
    }
    drained(&ctx, DeliveryCounts::default()).await;
}

/// The receiver answers 503, then refuses connections, then comes back: nothing is lost, nothing arrives twice,
/// and no session's event overtakes an earlier one (while the receiver is down only the first event of each
/// session is ever tried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_while_then_up_gets_every_event_in_order_once() {
    let ctx = TestContext::new().await;
    let mut receiver = Receiver::start(ctx.clock.clone()).await;
    receiver.answer(Answering::Unavailable);
    register(&ctx, &receiver, None).await;
    let mut sessions = Vec::new();
    for i in 0..3 {
        let s = ctx.create_session(None).await;
        for n in 0..2 {
            let text = format!("message {n} of session {i}");
            ctx.send(s.session_id, &text, types::TransportType::Http)
                .await;
        }
        sessions.push(s.session_id.to_string());
    }

    // Two rounds of 503s: each time the head of each session's queue, and nothing else.
    let mut received = Vec::new();
    for round in 0..2 {
        let mut this_round = Vec::new();
        for _ in 0..3 {
            this_round.push(receiver.next().await);
        }
        let mut heads: Vec<(String, String, u16)> = this_round
            .iter()
            .map(|r| (r.session(), r.kind(), r.status))
            .collect();
        heads.sort();
        let mut expected: Vec<(String, String, u16)> = sessions
            .iter()
            .map(|s| (s.clone(), "session.created".to_string(), 503))
            .collect();
        expected.sort();
        assert_eq!(heads, expected, "round {round}");
        received.extend(this_round);
        if round == 0 {
            // The first retry comes 5 s later.
            advance(&ctx, Duration::seconds(5));
        }
    }

    // Now connections are refused: the third attempts, 10 s after the second ones, fail without reaching the
    // receiver, and are put off by 20 s (the third delay).
    receiver.refuse().await;
    advance(&ctx, Duration::seconds(10));
    let store = ctx.store.clone();
    let clock = ctx.clock.clone();
    eventually(
        &ctx,
        "the third attempts failed and were put off by 20 s",
        || {
            let (store, clock) = (store.clone(), clock.clone());
            async move {
                let due = store.next_delivery_at().await.unwrap();
                due == Some(clock.now() + Duration::seconds(20))
            }
        },
    )
    .await;

    // Back up: every event arrives, each once, each session's in order.
    receiver.listen_again().await;
    receiver.answer(Answering::Ok);
    advance(&ctx, Duration::seconds(20));
    received.extend(receiver.until_delivered(15).await);
    assert_eq!(assert_once_each(&received), 15);
    let by_session = delivered_by_session(&received);
    for s in &sessions {
        assert_eq!(
            by_session[s],
            [
                "session.created",
                "message.created",
                "message.reply",
                "message.created",
                "message.reply"
            ],
            "session {s}"
        );
    }
    // The messages in the order of the history.
    for s in &sessions {
        let contents: Vec<String> = received
            .iter()
            .filter(|r| r.status == 200 && &r.session() == s && r.kind().starts_with("message."))
            .map(|r| {
                r.json()["data"]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(contents, crate::support::contents(&ctx.history(s).await));
    }
    drained(&ctx, DeliveryCounts::default()).await;
}

/// After its last attempt a delivery is marked failed and kept; the session's next event goes.
#[tokio::test]
async fn a_delivery_given_up_on_no_longer_holds_its_session() {
    let ctx = TestContext::with_options(TestOptions {
        webhooks: WebhookSettings {
            retry: RetryPolicy {
                max_attempts: 2,
                ..RetryPolicy::default()
            },
            ..TestOptions::default().webhooks
        },
        ..TestOptions::default()
    })
    .await;
    let mut receiver = Receiver::start(ctx.clock.clone()).await;
    receiver.answer(Answering::Unavailable);
    register(&ctx, &receiver, None).await;
    let s = ctx.create_session(None).await;
    let first = receiver.next().await;
    assert_eq!(
        (first.kind().as_str(), first.status),
        ("session.created", 503)
    );
    advance(&ctx, Duration::seconds(5));
    let second = receiver.next().await;
    assert_eq!(
        (second.id.as_str(), second.status),
        (first.id.as_str(), 503)
    );
    drained(
        &ctx,
        DeliveryCounts {
            pending: 0,
            failed: 1,
        },
    )
    .await;

    receiver.answer(Answering::Ok);
    ctx.delete(s.session_id).await;
    let deleted = receiver.next().await;
    assert_eq!(
        (deleted.kind().as_str(), deleted.status),
        ("session.deleted", 200)
    );
    assert_eq!(deleted.verified, Ok(()));
    // Failed deliveries are purged after their retention (a week), by the dispatcher's periodic purge.
    let before = ctx.clock.now() + Duration::days(8);
    assert_eq!(
        ctx.store
            .purge_failed_deliveries(before, 100)
            .await
            .unwrap(),
        1
    );
}

/// Deleting a webhook drops what is still queued for it; other webhooks keep theirs.
#[tokio::test]
async fn a_deleted_webhooks_queue_goes_with_it() {
    let ctx = TestContext::new().await;
    let mut down = Receiver::start(ctx.clock.clone()).await;
    down.answer(Answering::Unavailable);
    let gone = register(&ctx, &down, None).await;
    let mut up = Receiver::start(ctx.clock.clone()).await;
    register(&ctx, &up, None).await;
    let s = ctx.create_session(None).await;
    ctx.send(s.session_id, "hi", types::TransportType::Http)
        .await;
    assert_eq!(down.next().await.status, 503);
    assert_eq!(up.until_delivered(3).await.len(), 3);
    // The down receiver's three events.
    drained(
        &ctx,
        DeliveryCounts {
            pending: 3,
            failed: 0,
        },
    )
    .await;
    let id = gone.id.to_string();
    ok(
        "delete_webhook",
        ctx.client.delete_webhook().webhook_id(&id).send(),
    )
    .await;
    assert_eq!(
        ctx.store.delivery_counts().await.unwrap(),
        DeliveryCounts::default()
    );
    down.answer(Answering::Ok);
    advance(&ctx, Duration::minutes(10));
    ctx.delete(s.session_id).await;
    let last = up.next().await;
    assert_eq!(last.kind(), "session.deleted");
    drained(&ctx, DeliveryCounts::default()).await;
}
