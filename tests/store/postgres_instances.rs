//! Checks that only make sense for several PostgreSQL stores on one database, as several server instances
//! would be.

use super::*;

use agent_sessions_server::domain::{KeyState, StoredResponse};

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
    let mut s = stored_session(&**a).await;
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
    let s = stored_session(&*stores[0]).await;
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
    let mut s = stored_session(&*stores[0]).await;
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

/// Dispatchers of three instances claiming at once: every head is claimed by exactly one of them, and none of
/// them takes a session's second delivery while its first is leased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_claims_across_instances_take_each_head_once() {
    use agent_sessions_server::domain::EventFilter;
    let Some((_, stores)) = instances(3).await else {
        return;
    };
    stores[0]
        .insert_webhook(&super::webhooks::webhook(EventFilter::all(), 0))
        .await
        .unwrap();
    let mut sessions = Vec::new();
    for i in 0..30 {
        let mut s = new_session(Uuid::new_v4(), Uuid::new_v4(), at(0));
        insert(&*stores[i % 3], &s).await;
        record(&*stores[(i + 1) % 3], &mut s, "m", at(1)).await;
        sessions.push(s.id);
    }
    let claims = futures::future::join_all((0..12).map(|i| {
        let store = stores[i % 3].clone();
        async move {
            store
                .claim_deliveries(at(10), at(60_010), Uuid::new_v4(), 4)
                .await
                .unwrap()
        }
    }))
    .await;
    let mut claimed: Vec<(Uuid, Uuid)> = claims
        .iter()
        .flatten()
        .map(|d| (d.session_id, d.event_id))
        .collect();
    claimed.sort();
    let mut by_session: Vec<Uuid> = claimed.iter().map(|(s, _)| *s).collect();
    by_session.dedup();
    assert_eq!(
        claimed.len(),
        by_session.len(),
        "one delivery per session: {claimed:?}"
    );
    // Whatever the claims left (fewer than 30 if several raced for the same heads) is there for the next ones.
    let rest = stores[1]
        .claim_deliveries(at(10), at(60_010), Uuid::new_v4(), 100)
        .await
        .unwrap();
    let mut heads: Vec<Uuid> = by_session
        .into_iter()
        .chain(rest.iter().map(|d| d.session_id))
        .collect();
    heads.sort();
    sessions.sort();
    assert_eq!(heads, sessions, "every session's head, each once");
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
    let mut s = stored_session(&**store).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_claimed_once_over_instances() {
    let Some((_, stores)) = instances(3).await else {
        return;
    };
    let k = key("key:shared", "createSession", "one-of-thirty");
    let winners = concurrent_key_claims(&stores, &k, 30).await;
    assert_eq!(winners.len(), 1, "exactly one instance's claim wins");
    let response = StoredResponse {
        status: 201,
        body: r#"{"sessionId":"s"}"#.into(),
    };
    assert!(stores[0]
        .complete_idempotency_key(&k, winners[0], &response)
        .await
        .unwrap());
    for store in &stores {
        let record = store.get_idempotency_key(&k, at(1)).await.unwrap().unwrap();
        assert_eq!(record.state, KeyState::Done(response.clone()));
    }
    close_all(stores).await;
}
