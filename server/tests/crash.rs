//! The server binary under faults, run as an operator runs it, on SQLite and on PostgreSQL:
//! - its database stops taking writes mid-load (SQLite: the file made immutable; PostgreSQL: stopped, then
//!   started again): requests get 503s, the log says so once (not once per failed request) and once more
//!   when it is over, and the server serves again by itself;
//! - `kill -9` mid-load: restarted on the same database, it has every session whose creation was
//!   acknowledged, and no acknowledged renewal count went backwards.
//!
//! A test binary of its own: only here does cargo provide the path of the binary it built.

// The root test suite's guard over immutable files (one source for both).
#[path = "../../tests/faults/immutable.rs"]
mod immutable;
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use immutable::Immutable;
use support::load::{Load, Record};
use support::postgres::Postgres;
use support::ServerProcess;
use uuid::Uuid;

/// The demo echo agent every new store gets.
const DEMO_AGENT: Uuid = Uuid::from_u128(0x3c90c3cc_0d44_4b50_8888_8dd25736052a);
const WORKERS: usize = 4;
/// How long a test waits for something that must happen.
const WAIT: Duration = Duration::from_secs(20);
/// Writes acknowledged before each fault.
const WRITES: usize = 200;
/// How long the server waits before logging that an outage is over (`outage::QUIET`), plus slack.
const RECOVERY_LINE_WAIT: Duration = Duration::from_secs(5 + 20);
/// What the log says when an outage begins and when it ends.
const SQLITE_OUTAGE: [&str; 2] = ["SQLite writes failing", "SQLite writes recovered"];
const POSTGRES_OUTAGE: [&str; 2] = ["PostgreSQL failing", "PostgreSQL recovered"];

/// Every acknowledged session exists on `server`, with at least its acknowledged renewal count. Returns how
/// many sessions and renewals were checked.
async fn assert_nothing_acknowledged_lost(
    server: &ServerProcess,
    record: &Record,
) -> (usize, usize) {
    let http = reqwest::Client::new();
    for id in &record.created {
        let response = http
            .get(format!("{}/api/messaging/sessions/{id}", server.base_url))
            .send()
            .await
            .expect("the restarted server answers");
        assert_eq!(response.status(), 200, "acknowledged session {id} lost");
        let session: serde_json::Value = response.json().await.unwrap();
        let count = session["renewalCount"].as_i64().unwrap();
        if let Some(acked) = record.renewals.get(id) {
            assert!(
                count >= *acked,
                "{id}: renewal count {count} < acknowledged {acked}"
            );
        }
    }
    (record.created.len(), record.renewals.len())
}

/// After an outage that began at `since` and has just ended: writes succeed again, and the log has one ERROR line
/// for the whole outage (saying `failing`), a line saying `recovered`, and no warning. Returns those two lines.
async fn assert_recovered(
    load: &mut Load,
    server: &mut ServerProcess,
    since: Instant,
    [failing, recovered]: [&str; 2],
) -> (String, String) {
    let back = Instant::now();
    load.wait_for("writes again", WAIT, |r| r.succeeded(0, back) >= WRITES)
        .await;
    let recovered = server
        .wait_for_line(since, recovered, RECOVERY_LINE_WAIT)
        .await;
    let errors = server.lines(since, " ERROR ");
    assert_eq!(errors.len(), 1, "one line for the outage: {errors:#?}");
    assert!(errors[0].contains(failing), "{}", errors[0]);
    let warnings = server.lines(since, " WARN ");
    assert!(warnings.is_empty(), "{warnings:#?}");
    (errors[0].clone(), recovered)
}

/// Kills the server with SIGKILL once the load has had writes acknowledged since now; then the load stops. No
/// answer was anything but a success or a 503. Returns what the load recorded.
async fn kill_9_under(mut load: Load, server: ServerProcess) -> Record {
    let before_kill = Instant::now();
    load.wait_for("writes", WAIT, |r| r.succeeded(0, before_kill) >= WRITES)
        .await;
    server.kill();
    let record = load.stop().await;
    assert_only_successes_and_503s(&record);
    record
}

/// No answer was anything but a success or a 503 (None: no answer, from the killed process).
fn assert_only_successes_and_503s(record: &Record) {
    for call in &record.calls {
        match call.status {
            None | Some(200 | 201) => {}
            Some(503) => assert_eq!(call.code.as_deref(), Some("SERVICE_UNAVAILABLE")),
            Some(other) => panic!("a request got {other}: {call:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_read_only_then_kill_9_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let url = format!("sqlite:{}", db.display());
    let mut server = ServerProcess::start(&url);
    let mut load = Load::start(&[server.base_url.clone()], DEMO_AGENT, WORKERS);
    let began = Instant::now();
    load.wait_for("writes", WAIT, |r| r.succeeded(0, began) >= WRITES)
        .await;

    // The file stops taking writes (root only: immutable files stop root and open files too).
    let files = vec![db.clone(), PathBuf::from(format!("{}-wal", db.display()))];
    // Before the files change: the first failure may be logged at once.
    let fault = Instant::now();
    if let Some(immutable) = Immutable::new(files) {
        load.wait_for("503s", WAIT, |r| r.count(0, 503, fault) >= 50)
            .await;
        let failed = load.inspect(|r| r.count(0, 503, fault));
        drop(immutable);
        let (failing, recovered) =
            assert_recovered(&mut load, &mut server, fault, SQLITE_OUTAGE).await;
        eprintln!(
            "SQLite read-only: {failed} writes answered 503, logged as:\n  {failing}\n  {recovered}"
        );
    } else {
        eprintln!("skipping the read-only phase: chattr +i is not possible here (needs root)");
    }

    // kill -9 mid-load, then a restart on the same file.
    let record = kill_9_under(load, server).await;
    let server = ServerProcess::start(&url);
    let (sessions, renewals) = assert_nothing_acknowledged_lost(&server, &record).await;
    eprintln!(
        "SQLite kill -9: {sessions} acknowledged sessions and {renewals} renewal counts kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_then_kill_9_under_load() {
    let Some(pg) = tokio::task::spawn_blocking(Postgres::start).await.unwrap() else {
        eprintln!("skipping: no PostgreSQL");
        return;
    };
    let url = pg.url();
    let mut server = ServerProcess::start(&url);
    let mut load = Load::start(&[server.base_url.clone()], DEMO_AGENT, WORKERS);
    let began = Instant::now();
    load.wait_for("writes", WAIT, |r| r.succeeded(0, began) >= WRITES)
        .await;

    // PostgreSQL stopped (connections are told and closed), then started again.
    let down = Instant::now();
    tokio::task::block_in_place(|| pg.stop("fast"));
    load.wait_for("503s", WAIT, |r| r.count(0, 503, down) >= 20)
        .await;
    tokio::task::block_in_place(|| pg.start_again());
    let up = Instant::now();
    let (failing, recovered) =
        assert_recovered(&mut load, &mut server, down, POSTGRES_OUTAGE).await;
    let failed = load.inspect(|r| r.count(0, 503, down));
    eprintln!(
        "PostgreSQL outage: {:.1?} down, {failed} requests answered 503, logged as:\n  {failing}\n  {recovered}",
        up - down
    );

    // kill -9 mid-load, then a restart on the same database.
    let record = kill_9_under(load, server).await;
    let slowest = record.slowest(down, up);
    assert!(
        slowest < Duration::from_secs(5),
        "a request took {slowest:?} while PostgreSQL was down"
    );
    let server = ServerProcess::start(&url);
    let (sessions, renewals) = assert_nothing_acknowledged_lost(&server, &record).await;
    eprintln!(
        "PostgreSQL kill -9: {sessions} acknowledged sessions and {renewals} renewal counts kept; slowest \
         request while PostgreSQL was down {slowest:.2?}"
    );
}
