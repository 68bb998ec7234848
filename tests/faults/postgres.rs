//! PostgreSQL stopped and started again under load, with two instances on it: requests fail fast with 503
//! while it is down, both instances serve again by themselves when it is back, no acknowledged write is lost,
//! and event streams miss no stored event, including those committed while an instance could not listen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sessions::streams::{SessionEvent, SessionEventFrame};
use agent_sessions::types;
use agent_sessions_server::clock::MockClock;
use agent_sessions_server::store::DEFAULT_ACQUIRE_TIMEOUT;
use reqwest::Method;
use serde_json::json;

use super::load::Load;
use crate::pg::{psql, DedicatedServer};
use crate::support::*;

/// Load workers over both instances.
const WORKERS: usize = 6;

/// The longest any request may take while the database is down: the acquire timeout (the first requests of
/// the outage wait for it; once the outage is known, requests fail within half a second), plus scheduling
/// slack on a busy 2-core machine.
fn max_latency() -> Duration {
    DEFAULT_ACQUIRE_TIMEOUT + Duration::from_secs(2)
}

/// One request of each operation of the API, about `session` and `agent`.
fn every_operation(
    session: &str,
    agent: uuid::Uuid,
) -> Vec<(Method, String, Option<serde_json::Value>)> {
    let s = format!("/api/messaging/sessions/{session}");
    let a = format!("/api/agents/{agent}");
    let create = json!({"agentId": agent, "userId": agent});
    vec![
        (Method::GET, "/api/messaging/sessions/health".into(), None),
        (Method::POST, "/api/messaging/sessions".into(), Some(create)),
        (Method::GET, "/api/messaging/sessions".into(), None),
        (Method::GET, s.clone(), None),
        (Method::DELETE, s.clone(), None),
        (
            Method::POST,
            format!("{s}/messages"),
            Some(json!({"content": "hi"})),
        ),
        (Method::GET, format!("{s}/messages"), None),
        (Method::GET, format!("{s}/events"), None),
        (Method::POST, format!("{s}/renew"), Some(json!({}))),
        (
            Method::PATCH,
            format!("{s}/timeout"),
            Some(json!({"timeoutMinutes": 60})),
        ),
        (Method::POST, format!("{s}/heartbeat"), Some(json!({}))),
        (Method::POST, format!("{s}/token"), Some(json!({}))),
        (Method::GET, "/api/agents".into(), None),
        (
            Method::POST,
            "/api/agents".into(),
            Some(json!({"name": "during the outage"})),
        ),
        (Method::GET, a.clone(), None),
        (Method::DELETE, a, None),
    ]
}

/// How many connections instance B has open (its URL names them `instance-b`).
async fn b_connections(admin: &str) -> String {
    psql(
        admin,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'instance-b'",
    )
    .await
    .unwrap()
}

async fn health(ctx: &TestContext) -> (u16, Duration) {
    let started = Instant::now();
    let (status, _, _) = ctx.get_raw("/api/messaging/sessions/health").await;
    (status, started.elapsed())
}

/// The ids of the stored events of `session`, in order.
async fn stored_event_ids(url: &str, session: &str) -> Vec<i64> {
    psql(
        url,
        &format!("SELECT seq FROM events WHERE session_id = '{session}' ORDER BY seq"),
    )
    .await
    .expect("events readable")
    .lines()
    .map(|l| l.parse().expect("a seq"))
    .collect()
}

/// Reads frames until one has id `last`; returns the ids of the frames that had one (chunks have none).
async fn ids_until(
    stream: &mut agent_sessions::streams::BoxedEvents<SessionEventFrame>,
    last: i64,
) -> Vec<i64> {
    let mut ids = Vec::new();
    while ids.last() != Some(&last) {
        if let Some(id) = next(stream).await.id {
            ids.push(id);
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_started_under_load_with_two_instances() {
    let Some(pg) = DedicatedServer::start().await else {
        eprintln!("skipping the PostgreSQL outage test: no server");
        return;
    };
    let admin = pg.url("postgres");
    psql(&admin, "CREATE DATABASE outage").await.unwrap();
    // Instance B connects as a role of its own, so that the test can keep B away from the database for a while
    // after the restart (B's connections are refused, as in a partition of B alone) while A commits events:
    // those must reach B's streams when B is back.
    psql(&admin, "CREATE ROLE instance_b LOGIN SUPERUSER")
        .await
        .unwrap();
    let db = pg.url("outage");
    let clock = Arc::new(MockClock::default());
    let a = TestContext::on_url(
        &format!("{db}?application_name=instance-a"),
        clock.clone(),
        TestOptions::default(),
    )
    .await;
    let b = TestContext::on_url(
        &format!(
            "{}?application_name=instance-b",
            pg.url_as("instance_b", "outage")
        ),
        clock.clone(),
        TestOptions::default(),
    )
    .await;

    // The watched session: two streams on B (one kept open throughout, one closed during the outage and
    // resumed after it with Last-Event-ID), one on A.
    let watched = a.new_session_id(None).await;
    let mut kept = b.events(&watched).await;
    let mut resumed = b.events(&watched).await;
    let mut on_a = a.events(&watched).await;
    a.renew(&watched).await;
    let first = next(&mut kept).await.id.expect("a stored event");
    assert_eq!(next(&mut resumed).await.id, Some(first));
    assert_eq!(next(&mut on_a).await.id, Some(first));

    // The sweeper of A, to see it come back by itself.
    let (stop_sweeper, sweeper_stop) = tokio::sync::watch::channel(false);
    let sweeper = a.sweeper().spawn(sweeper_stop);

    let mut load = Load::start(
        &[a.base_url.clone(), b.base_url.clone()],
        a.agent_id,
        WORKERS,
    );
    let began = Instant::now();
    load.wait_for("writes before the outage", WAIT, |r| {
        r.succeeded(0, began) >= 50 && r.succeeded(1, began) >= 50
    })
    .await;

    // The outage: every server process quits at once, as in a crash. B may not reconnect until let back in.
    assert_ne!(
        b_connections(&admin).await,
        "0",
        "B's connections carry its name"
    );
    psql(&admin, "ALTER ROLE instance_b NOLOGIN").await.unwrap();
    let down = Instant::now();
    pg.stop("immediate").await;
    drop(resumed);
    load.wait_for("503s from both instances", WAIT * 3, |r| {
        r.count(0, 503, down) >= 10 && r.count(1, 503, down) >= 10
    })
    .await;
    let mut health_took = Duration::ZERO;
    for ctx in [&a, &b] {
        let (status, took) = health(ctx).await;
        assert_eq!(status, 503, "health while the database is down");
        assert!(took < max_latency(), "health took {took:?}");
        health_took = health_took.max(took);
    }
    // Every operation answers 503 while it is down: each touches the store. (The load checks Retry-After.)
    let calls =
        every_operation(&watched, a.agent_id)
            .into_iter()
            .map(|(method, path, body)| async {
                let resp = raw(
                    method.clone(),
                    &a.url(&path),
                    body.as_ref().map(|_| "application/json"),
                    body.map(|b| b.to_string()).unwrap_or_default(),
                )
                .await;
                (method, path, resp)
            });
    for (method, path, resp) in futures::future::join_all(calls).await {
        assert_eq!(resp.0, 503, "{method} {path}: {}", resp.2);
        assert_error(&resp, 503, "SERVICE_UNAVAILABLE");
        assert!(
            !resp.2.to_string().contains("refused"),
            "{method} {path}: internal text in {}",
            resp.2
        );
    }

    // Back: A serves again by itself.
    let outage = down.elapsed();
    let failed_while_down = load.inspect(|r| r.count(0, 503, down) + r.count(1, 503, down));
    pg.start_again().await;
    let up = Instant::now();
    load.wait_for("A to serve again", WAIT * 3, |r| r.succeeded(0, up) >= 1)
        .await;
    let a_recovered = up.elapsed();

    // While B still cannot connect, A commits events of the watched session: renewals, a message and its reply.
    for _ in 0..2 {
        a.renew(&watched).await;
    }
    a.send(
        &watched,
        "during B's absence",
        types::TransportType::Websocket,
    )
    .await;
    // The reply is stored once A's stream shows it.
    loop {
        if let SessionEvent::Message(m) = next(&mut on_a).await.event {
            if m.is_agent {
                break;
            }
        }
    }
    assert_eq!(
        b_connections(&admin).await,
        "0",
        "B had no connection (so no listener) while A committed"
    );
    psql(&admin, "ALTER ROLE instance_b LOGIN").await.unwrap();
    let b_back = Instant::now();
    load.wait_for("B to serve again", WAIT * 3, |r| {
        r.succeeded(1, b_back) >= 1
    })
    .await;
    let b_recovered = b_back.elapsed();

    // Every stored event of the watched session after the first, in order, on the stream kept open through
    // the outage (replayed by B's listener when it came back) and on the one resumed with Last-Event-ID.
    let stored = stored_event_ids(&db, &watched).await;
    let after_first: Vec<i64> = stored.into_iter().filter(|&id| id > first).collect();
    assert!(
        after_first.len() >= 4,
        "two renewals, a message and its reply: {after_first:?}"
    );
    let last = *after_first.last().unwrap();
    assert_eq!(ids_until(&mut kept, last).await, after_first, "kept stream");
    let mut resumed = b
        .client
        .session_events(&watched, Some(first))
        .await
        .unwrap();
    assert_eq!(
        ids_until(&mut resumed, last).await,
        after_first,
        "resumed stream"
    );

    // The sweeper of A announces again: the watched session enters its warning window, and B's stream hears it.
    let record = load.stop().await;
    a.advance_minutes(26);
    let sweeper_wait = agent_sessions_server::sweeper::MAX_BACKOFF + WAIT;
    let warned = tokio::time::timeout(sweeper_wait, async {
        loop {
            if let SessionEvent::Warning(_) = next(&mut kept).await.event {
                return;
            }
        }
    })
    .await;
    assert!(
        warned.is_ok(),
        "the sweeper announced nothing after the outage"
    );
    let _ = stop_sweeper.send(true);
    sweeper.await.unwrap();

    // No acknowledged write lost: every acknowledged session is stored, no renewal count went back.
    let stored: std::collections::HashMap<String, i64> =
        psql(&db, "SELECT id, renewal_count FROM sessions")
            .await
            .unwrap()
            .lines()
            .map(|l| {
                let (id, count) = l.split_once('|').expect("id|count");
                (id.to_string(), count.parse().unwrap())
            })
            .collect();
    for id in &record.created {
        assert!(
            stored.contains_key(&id.to_string()),
            "acknowledged session {id} lost"
        );
    }
    for (id, acked) in &record.renewals {
        let now = stored[&id.to_string()];
        assert!(
            now >= *acked,
            "{id}: renewal count {now} < acknowledged {acked}"
        );
    }

    // Every failure was a fast 503 with Retry-After: no 500, no hang.
    for call in &record.calls {
        match call.status {
            Some(200 | 201) => {}
            Some(503) => {
                assert_eq!(call.code.as_deref(), Some("SERVICE_UNAVAILABLE"));
                assert_eq!(call.retry_after.as_deref(), Some("2"));
            }
            other => panic!("a request got {other:?}: {call:?}"),
        }
    }
    let slowest = record.slowest(down, up);
    assert!(
        slowest < max_latency(),
        "a request took {slowest:?} while the database was down"
    );
    let during: Vec<_> = record
        .calls
        .iter()
        .filter(|c| c.started >= down + DEFAULT_ACQUIRE_TIMEOUT && c.started < up)
        .map(|c| c.took)
        .collect();
    let fast_fail = during.iter().max().copied().unwrap_or_default();
    eprintln!(
        "PostgreSQL outage: {outage:.1?} down, {failed_while_down} requests answered 503 meanwhile; {} requests \
         in all, {} 503s; slowest request while down {slowest:.2?}, slowest once the outage was known \
         {fast_fail:.2?}, health {health_took:.2?}; A served again {a_recovered:.2?} after the restart, B \
         {b_recovered:.2?} after it was let back in",
        record.calls.len(),
        record.calls.iter().filter(|c| c.status == Some(503)).count(),
    );
    assert!(
        fast_fail < Duration::from_millis(1500),
        "once the outage is known, requests fail within half a second (plus slack): {fast_fail:?}"
    );
    assert!(
        a_recovered < Duration::from_secs(5),
        "A served again {a_recovered:?} after the restart"
    );
}
