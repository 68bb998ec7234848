//! Durability: sessions, their expiry and their renewal counts survive a server restart on the same file.

use std::collections::HashMap;

use chrono::Duration;
use uuid::Uuid;

use crate::support::*;

#[tokio::test]
async fn sessions_survive_a_restart() {
    let ctx = TestContext::new().await;
    let agent = ctx.agent_id;
    let mut before = HashMap::new();
    for i in 0..20 {
        let s = ctx
            .create_session(Some(timeout_minutes(30.0 + f64::from(i))))
            .await;
        before.insert(s.session_id, s);
    }
    // Renew some a different number of times.
    let ids: Vec<Uuid> = before.keys().copied().collect();
    for (i, id) in ids.iter().enumerate().take(5) {
        for _ in 0..=i {
            ctx.clock.advance(Duration::seconds(1));
            let s = ctx.heartbeat(id).await;
            before.insert(*id, s);
        }
    }

    let (dir, db, clock) = ctx.stop().await;
    let ctx = TestContext::start(dir, db, clock, TestOptions::default()).await;
    assert_eq!(
        ctx.agent_id, agent,
        "no second demo agent on a non-empty store"
    );
    assert_eq!(ctx.agents().await.total, 1);

    for (id, old) in &before {
        let s = ctx.get(id).await;
        assert_eq!(s.expires_at, old.expires_at);
        assert_eq!(s.renewal_count, old.renewal_count);
        assert_eq!(s.created_at, old.created_at);
        assert_eq!(s.last_activity, old.last_activity);
        assert_eq!(s.timeout_config, old.timeout_config);
        assert_eq!(s.channel_id, old.channel_id);
    }
    let renewals: i64 = before.values().map(|s| s.renewal_count).sum();
    assert_eq!(renewals, 1 + 2 + 3 + 4 + 5);
    let list = ctx.list().await;
    assert_eq!(list.total, 20);
}

#[tokio::test]
async fn concurrent_heartbeats_lose_no_renewal() {
    let (ctx, s) = TestContext::with_session(None).await;
    let id = s.session_id.to_string();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let client = ctx.client.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            client
                .session_heartbeat()
                .session_id(id)
                .send()
                .await
                .map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("heartbeat succeeds");
    }
    let got = ctx.get(&id).await;
    assert_eq!(got.renewal_count, 50);
}
