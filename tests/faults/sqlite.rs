//! A SQLite database that stops taking writes: its disk fills up, or its files become read-only. Writes answer
//! 503 (reads go on), the health check says so, nothing acknowledged is lost, the file is not corrupted, and
//! the server writes again by itself once space or access comes back.
//!
//! Both need root: a full disk is a tiny tmpfs (`mount`), a read-only file is an immutable one (`chattr +i`,
//! which, unlike permissions, also stops root and already open files). Without them the tests say so and skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use agent_sessions_server::clock::MockClock;
use serde_json::{json, Value};
use uuid::Uuid;

use super::immutable::Immutable;
use crate::support::*;

async fn post(ctx: &TestContext, path: &str, body: Value) -> Raw {
    ctx.post_json(path, body.to_string()).await
}

/// A create with `padding` bytes of metadata; the id if it was acknowledged.
async fn create(ctx: &TestContext, padding: usize) -> (Raw, Option<Uuid>) {
    let body = json!({
        "agentId": ctx.agent_id,
        "userId": Uuid::new_v4(),
        "metadata": {"padding": "x".repeat(padding)},
    });
    let resp = post(ctx, "/api/messaging/sessions", body).await;
    let id = (resp.0 == 201).then(|| resp.2["sessionId"].as_str().unwrap().parse().unwrap());
    (resp, id)
}

async fn health(ctx: &TestContext) -> u16 {
    ctx.get_raw("/api/messaging/sessions/health").await.0
}

/// The 503 of a store that takes no writes: the API's error, with `Retry-After`, and nothing internal.
fn assert_unavailable(resp: &Raw) {
    assert_error(resp, 503, "SERVICE_UNAVAILABLE");
    let message = resp.2["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains("disk") && !message.contains("I/O"),
        "{message}"
    );
}

/// After the store is closed: the file passes SQLite's integrity check and holds every acknowledged session.
fn assert_intact(db: &Path, acknowledged: &[Uuid]) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    for id in acknowledged {
        let found: i64 = conn
            .query_row("SELECT COUNT(*) FROM sessions WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(found, 1, "acknowledged session {id} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_answers_503_to_writes_and_recovers() {
    let ctx = TestContext::new().await;
    let db = ctx.db_path.clone();
    let mut acknowledged = Vec::new();
    for _ in 0..5 {
        acknowledged.extend(create(&ctx, 0).await.1);
    }
    let files = vec![db.clone(), PathBuf::from(format!("{}-wal", db.display()))];
    let Some(guard) = Immutable::new(files) else {
        eprintln!("skipping the read-only SQLite test: chattr +i is not possible here (root, ext4/xfs/btrfs)");
        return;
    };

    let (resp, id) = create(&ctx, 0).await;
    assert_unavailable(&resp);
    assert_eq!(id, None);
    let heartbeat = format!("/api/messaging/sessions/{}/heartbeat", acknowledged[0]);
    assert_unavailable(&post(&ctx, &heartbeat, json!({})).await);
    // Reads go on.
    let (status, _, _) = ctx
        .get_raw(&format!("/api/messaging/sessions/{}", acknowledged[1]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        health(&ctx).await,
        503,
        "health while no write can be stored"
    );

    drop(guard);
    // No request has written since: the health check's own probe finds the store writable again.
    assert_eq!(
        health(&ctx).await,
        200,
        "health once the file is writable again"
    );
    let (resp, id) = create(&ctx, 0).await;
    assert_eq!(resp.0, 201, "{}", resp.2);
    acknowledged.extend(id);
    assert_eq!(post(&ctx, &heartbeat, json!({})).await.0, 200);

    // The temp dir lives as long as `_dir`.
    let (_dir, _, _) = ctx.stop().await;
    assert_intact(&db, &acknowledged);
}

/// A tmpfs of `size` mounted on a temp dir, unmounted however the test ends.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success());
        mounted.then_some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
    }
}

/// Fills the file system at `dir` with `file` until it has no space left.
fn fill(file: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(file).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    while f.write_all(&chunk).and_then(|_| f.sync_data()).is_ok() {}
    // The last partial chunk may have taken what was left below 16 KiB; take the rest byte by byte.
    while f.write_all(&[0]).and_then(|_| f.sync_data()).is_ok() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_to_writes_and_recovers_when_space_comes_back() {
    let Some(tmpfs) = Tmpfs::mount("4m") else {
        eprintln!("skipping the full-disk SQLite test: cannot mount a tmpfs here (needs root)");
        return;
    };
    let db = tmpfs.path().join("sessions.db");
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let ctx = TestContext::start(
        dir,
        db.clone(),
        Arc::new(MockClock::default()),
        TestOptions::default(),
    )
    .await;
    let mut acknowledged = Vec::new();
    for _ in 0..5 {
        acknowledged.extend(create(&ctx, 0).await.1);
    }
    let filler = tmpfs.path().join("filler");
    fill(&filler);

    // Writes go on while they fit in the space the WAL already has; then they fail, as 503s.
    let mut first_failure = None;
    for attempt in 0..1000 {
        let (resp, id) = create(&ctx, 8 * 1024).await;
        match id {
            Some(id) => acknowledged.push(id),
            None => {
                assert_unavailable(&resp);
                first_failure = Some(attempt);
                break;
            }
        }
    }
    let first_failure = first_failure.expect("writes fail once the disk is full");
    for _ in 0..5 {
        let (resp, id) = create(&ctx, 8 * 1024).await;
        match id {
            Some(id) => acknowledged.push(id),
            None => assert_unavailable(&resp),
        }
    }
    let (status, _, _) = ctx
        .get_raw(&format!("/api/messaging/sessions/{}", acknowledged[0]))
        .await;
    assert_eq!(status, 200, "reads go on");
    assert_eq!(health(&ctx).await, 503, "health while the disk is full");

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(health(&ctx).await, 200, "health once there is space again");
    for _ in 0..20 {
        let (resp, id) = create(&ctx, 8 * 1024).await;
        assert_eq!(resp.0, 201, "{}", resp.2);
        acknowledged.extend(id);
    }
    eprintln!(
        "full disk: the first write failed after {first_failure} more fitted; {} acknowledged writes kept",
        acknowledged.len()
    );
    ctx.stop().await;
    assert_intact(&db, &acknowledged);
}
