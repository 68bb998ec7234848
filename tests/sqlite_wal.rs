//! The SQLite store's WAL under continuous load: it must start over from its beginning now and then, or it
//! grows without bound (it did: past 1 GB in a benchmark) and every lookup slows down with it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sessions_server::domain::{
    Agent, AgentBackend, Session, TimeoutConfig, TimeoutConfigPatch,
};
use agent_sessions_server::store::{SessionStore, SqliteStore};
use chrono::DateTime;
use serde_json::Map;
use uuid::Uuid;

/// Long enough for a loaded CI machine; the store restarts its WAL about once a second.
const WAIT: Duration = Duration::from_secs(30);

/// `mxFrame` of the WAL-index header at the start of the `-shm` file: the frames in the WAL now. SQLite keeps
/// the header in native byte order at offset 16 (after iVersion, unused, iChange, isInit, bigEndCksum, szPage).
fn wal_frames(shm: &std::path::Path) -> Option<u32> {
    let bytes = std::fs::read(shm).ok()?;
    Some(u32::from_ne_bytes(bytes.get(16..20)?.try_into().ok()?))
}

fn session() -> Session {
    let config = TimeoutConfig {
        timeout_minutes: 30.0,
        auto_renew: true,
        max_duration_minutes: 720.0,
        warning_threshold_minutes: 5.0,
    };
    // A fixed instant: the store does not look at the clock.
    let created = DateTime::from_timestamp(1_735_689_600, 0).unwrap();
    Session::new(AGENT, Uuid::new_v4(), Map::new(), config, created)
}

/// The one agent of these sessions (stored first: sessions are only stored for an existing agent).
const AGENT: Uuid = Uuid::from_u128(0xa6e7);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_starts_over_under_continuous_writes_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let store: Arc<dyn SessionStore> = Arc::new(
        SqliteStore::open(&format!("sqlite:{}", db.display()))
            .await
            .unwrap(),
    );
    store
        .insert_agent(&Agent {
            id: AGENT,
            name: "wal".into(),
            backend: AgentBackend::Echo,
            session_defaults: TimeoutConfigPatch::default(),
            created_at: DateTime::from_timestamp(1_735_689_600, 0).unwrap(),
        })
        .await
        .unwrap();
    let shm = dir.path().join("store.db-shm");
    let stop = Arc::new(AtomicBool::new(false));
    // Writers and readers that never pause: the load under which the WAL used to grow forever.
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let s = session();
                    store.insert_session(&s).await.unwrap();
                    assert_eq!(
                        store.get_session(s.id).await.unwrap().map(|r| r.id),
                        Some(s.id)
                    );
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut peak = 0;
    let restarted = loop {
        // This task writes too, and looks at the WAL after each of its writes.
        store.insert_session(&session()).await.unwrap();
        let frames = wal_frames(&shm).unwrap_or(0);
        if frames < peak {
            break true;
        }
        peak = frames;
        if started.elapsed() > WAIT {
            break false;
        }
    };
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    store.close().await;
    assert!(
        restarted,
        "the WAL never started over: {peak} frames after {WAIT:?} of writes"
    );
    assert!(peak > 0, "nothing was written to the WAL");
}
