//! Conformance checks of the webhook delivery queue: deliveries are queued by the writes that commit their
//! events (for the webhooks whose filter takes them, and only if the write happens), claims take the head of
//! each webhook's and session's queue under a lease, outcomes count only under their claim, failed deliveries
//! stop holding their queue, and deleting a webhook empties its queue.

use agent_sessions_server::domain::{
    Delivery, DeliveryOutcome, EventFilter, Webhook, WebhookEventType,
};
use agent_sessions_server::store::DeliveryCounts;

use super::*;

pub(super) fn webhook(events: EventFilter, created_ms: i64) -> Webhook {
    Webhook {
        id: Uuid::new_v4(),
        url: "http://127.0.0.1:9/hook".into(),
        events,
        secret: "whsec_c2VjcmV0".into(),
        created_at: at(created_ms),
    }
}

fn pending(n: u64) -> DeliveryCounts {
    DeliveryCounts {
        pending: n,
        failed: 0,
    }
}

async fn counts(store: &dyn SessionStore) -> DeliveryCounts {
    store.delivery_counts().await.unwrap()
}

/// `<session> <type>` of each claimed delivery, in queue order.
fn kinds(claimed: &[Delivery]) -> Vec<String> {
    claimed
        .iter()
        .map(|d| {
            let body: Value = serde_json::from_str(&d.body).unwrap();
            format!("{} {}", d.session_id, body["type"].as_str().unwrap())
        })
        .collect()
}

pub(super) async fn deliveries_are_queued_with_their_events(store: Arc<dyn SessionStore>) {
    let all = webhook(EventFilter::all(), 0);
    let replies = webhook(EventFilter::of([WebhookEventType::MessageReply]), 1);
    store.insert_webhook(&all).await.unwrap();
    store.insert_webhook(&replies).await.unwrap();
    assert_eq!(
        store.list_webhooks().await.unwrap(),
        [all.clone(), replies.clone()]
    );
    let queued = store.deliveries_queued();

    let mut s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
    insert(&*store, &s).await;
    assert_eq!(
        counts(&*store).await,
        pending(1),
        "session.created, for one"
    );
    tokio::time::timeout(WAIT, queued.notified())
        .await
        .expect("a commit that queued deliveries is announced");

    let m = record(&*store, &mut s, "hi", at(1)).await;
    assert_eq!(counts(&*store).await, pending(2));
    let reply = agent_reply(&s, &m, "ho", at(2));
    assert!(store
        .insert_reply(&reply, vec![SessionEvent::message(&reply)])
        .await
        .unwrap());
    assert_eq!(counts(&*store).await, pending(4), "the reply, for both");

    // A renewal is no webhook event; a warning is.
    touch(&*store, &mut s, at(3)).await;
    assert_eq!(counts(&*store).await, pending(4));
    let mut next = s.clone();
    next.version += 1;
    let warning = SessionEvent::warning(&next, at(4));
    assert!(store
        .update_session(&next, s.version, vec![warning.clone()])
        .await
        .unwrap());
    assert_eq!(counts(&*store).await, pending(5));
    // A write that loses its version check queues nothing.
    assert!(!store
        .update_session(&next, s.version, vec![warning])
        .await
        .unwrap());
    assert_eq!(counts(&*store).await, pending(5));

    // The deletion is queued, and the session's queued deliveries outlive it (and its purge).
    let deleted = SessionEvent::deleted(s.id, at(5));
    assert!(store
        .delete_session(s.id, vec![deleted.clone()])
        .await
        .unwrap());
    assert_eq!(counts(&*store).await, pending(6));
    assert!(!store.delete_session(s.id, vec![deleted]).await.unwrap());
    store.purge_sessions(at(1_000_000_000), 100).await.unwrap();
    assert_eq!(counts(&*store).await, pending(6));

    // A session whose agent is gone is not stored, and nothing is queued for it.
    let orphan = new_session(Uuid::new_v4(), Uuid::new_v4(), at(6));
    assert!(!store.insert_session(&orphan).await.unwrap());
    assert_eq!(counts(&*store).await, pending(6));

    let claimed = store
        .claim_deliveries(at(10), at(60_010), Uuid::new_v4(), 10)
        .await
        .unwrap();
    let heads: Vec<(Uuid, String)> = claimed
        .iter()
        .map(|d| (d.webhook_id, kinds(std::slice::from_ref(d))[0].clone()))
        .collect();
    assert_eq!(
        heads,
        [
            (all.id, format!("{} session.created", s.id)),
            (replies.id, format!("{} message.reply", s.id)),
        ],
        "one head per webhook and session"
    );
}

pub(super) async fn claims_take_each_queues_head_under_a_lease(store: Arc<dyn SessionStore>) {
    let hook = webhook(EventFilter::all(), 0);
    store.insert_webhook(&hook).await.unwrap();
    assert_eq!(store.next_delivery_at().await.unwrap(), None);
    let mut a = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
    let mut b = new_session(Uuid::new_v4(), Uuid::new_v4(), at(100));
    insert(&*store, &a).await;
    insert(&*store, &b).await;
    record(&*store, &mut a, "a1", at(1_000)).await;
    record(&*store, &mut b, "b1", at(1_100)).await;
    assert_eq!(store.next_delivery_at().await.unwrap(), Some(at(0)));
    // Due only from their commit time on.
    let (c1, c2) = (Uuid::new_v4(), Uuid::new_v4());
    let early = store
        .claim_deliveries(at(50), at(60_050), c1, 10)
        .await
        .unwrap();
    assert_eq!(kinds(&early), [format!("{} session.created", a.id)]);
    let first = store
        .claim_deliveries(at(2_000), at(62_000), c1, 10)
        .await
        .unwrap();
    assert_eq!(kinds(&first), [format!("{} session.created", b.id)]);
    let (a_created, b_created) = (&early[0], &first[0]);
    assert_eq!(
        (
            a_created.attempts,
            a_created.url.as_str(),
            a_created.secret.as_str()
        ),
        (1, hook.url.as_str(), hook.secret.as_str())
    );
    assert_eq!(a_created.enqueued_at, at(0));
    assert_eq!(a_created.claim, c1);
    assert!(a_created.seq < b_created.seq);
    // The heads are leased; what follows them waits.
    assert!(store
        .claim_deliveries(at(2_000), at(62_000), c2, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.next_delivery_at().await.unwrap(), Some(at(60_050)));

    // An outcome counts only under its claim.
    let delivered = DeliveryOutcome::Delivered;
    assert!(!store
        .finish_delivery(a_created.seq, c2, &delivered)
        .await
        .unwrap());
    assert!(store
        .finish_delivery(a_created.seq, c1, &delivered)
        .await
        .unwrap());
    assert!(!store
        .finish_delivery(a_created.seq, c1, &delivered)
        .await
        .unwrap());
    let retry = DeliveryOutcome::Retry {
        at: at(10_000),
        error: "503".into(),
    };
    assert!(store
        .finish_delivery(b_created.seq, c1, &retry)
        .await
        .unwrap());
    let next = store
        .claim_deliveries(at(3_000), at(63_000), c2, 10)
        .await
        .unwrap();
    assert_eq!(kinds(&next), [format!("{} message.created", a.id)]);
    assert_eq!(store.next_delivery_at().await.unwrap(), Some(at(10_000)));
    let again = store
        .claim_deliveries(at(10_000), at(70_000), c2, 10)
        .await
        .unwrap();
    assert_eq!(kinds(&again), [format!("{} session.created", b.id)]);
    assert_eq!(
        (again[0].event_id, again[0].attempts),
        (b_created.event_id, 2),
        "the same event, a second attempt"
    );

    // A lease that passes without an outcome: another claim takes the delivery over, and the first one's
    // outcome no longer counts.
    let a_message = &next[0];
    let c3 = Uuid::new_v4();
    assert!(store
        .claim_deliveries(at(62_999), at(122_999), c3, 10)
        .await
        .unwrap()
        .is_empty());
    let taken = store
        .claim_deliveries(at(63_000), at(123_000), c3, 10)
        .await
        .unwrap();
    assert_eq!(
        (taken[0].seq, taken[0].attempts, taken[0].claim),
        (a_message.seq, 2, c3)
    );
    assert!(!store
        .finish_delivery(a_message.seq, c2, &delivered)
        .await
        .unwrap());
    assert!(store
        .finish_delivery(a_message.seq, c3, &delivered)
        .await
        .unwrap());

    // Given up: kept as failed, and the session's next event may go.
    let failed = DeliveryOutcome::Failed {
        error: "503".into(),
    };
    assert!(store
        .finish_delivery(b_created.seq, c2, &failed)
        .await
        .unwrap());
    assert_eq!(
        counts(&*store).await,
        DeliveryCounts {
            pending: 1,
            failed: 1
        }
    );
    let after = store
        .claim_deliveries(at(70_000), at(130_000), c3, 10)
        .await
        .unwrap();
    assert_eq!(kinds(&after), [format!("{} message.created", b.id)]);
    assert_eq!(
        store.purge_failed_deliveries(at(99), 10).await.unwrap(),
        0,
        "failed deliveries are purged by the time of their event"
    );
    assert_eq!(store.purge_failed_deliveries(at(100), 10).await.unwrap(), 1);

    // Deleting the webhook drops its queue, leased rows included.
    assert!(store.delete_webhook(hook.id).await.unwrap());
    assert!(!store.delete_webhook(hook.id).await.unwrap());
    assert_eq!(counts(&*store).await, DeliveryCounts::default());
    assert!(!store
        .finish_delivery(after[0].seq, c3, &delivered)
        .await
        .unwrap());
    assert_eq!(store.next_delivery_at().await.unwrap(), None);
    assert!(store.list_webhooks().await.unwrap().is_empty());
}
