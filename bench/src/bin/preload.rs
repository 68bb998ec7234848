//! Preload for the scale run: writes many sessions straight into a SQLite store through the server library
//! (`store::open`, `Session::new`, `insert_session`), with many inserts in flight at once so that the store's
//! writer commits them in large groups. Creates the demo echo agent first if the store has none, writes the new
//! sessions' ids to a file (one a line), and prints the rate.
//!
//! Creation times are spread evenly over `--spread-minutes` before the reference instant, oldest first, as real
//! sessions arrive; so expiry times differ, as they do in a real store (the purge orders by expiry).
//! Live sessions are created over the last hour with a 1440-minute timeout, so that they neither expire nor enter
//! their warning window (which would make the sweeper update them all) during a run. `--expired` sessions are
//! created between three and two days ago with the shortest timeout: expired and past the default 24-hour
//! retention, already announced as expired, so that the sweeper's first pass purges them all.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use agent_sessions_server::clock::{Clock, SystemClock};
use agent_sessions_server::domain::{
    Agent, AgentBackend, Notice, Session, TimeoutConfigPatch, TimeoutPolicy,
};
use agent_sessions_server::service::DEMO_AGENT_ID;
use agent_sessions_server::store::{self, SessionStore};
use anyhow::Context;
use clap::Parser;
use serde_json::{json, Map, Value};
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(
    about = "Writes sessions into a SQLite store through the server library (bench/run --scale)"
)]
struct Args {
    /// The store, `sqlite:PATH` (created if missing).
    #[arg(long)]
    database_url: String,
    /// How many sessions to write.
    #[arg(long)]
    sessions: u64,
    /// Write sessions that expired three days ago (past retention) instead of live ones.
    #[arg(long)]
    expired: bool,
    /// Where to write the new sessions' ids, one a line.
    #[arg(long)]
    ids_out: Option<PathBuf>,
    /// Creation times spread evenly over this many minutes before the reference instant (now, or two days ago
    /// with `--expired`). Default: 60, or 1440 with `--expired`; 0 gives every session the same times.
    #[arg(long)]
    spread_minutes: Option<u64>,
    /// Inserts in flight at once (the writer commits up to 512 per transaction).
    #[arg(long, default_value_t = 2048)]
    concurrency: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.database_url.starts_with("sqlite:") {
        anyhow::bail!("preload writes SQLite stores only (sqlite:PATH)");
    }
    let store = store::open(&args.database_url).await?;
    let clock = SystemClock;
    if store.get_agent(DEMO_AGENT_ID).await?.is_none() {
        store
            .insert_agent(&Agent {
                id: DEMO_AGENT_ID,
                name: "Echo".into(),
                backend: AgentBackend::Echo,
                session_defaults: TimeoutConfigPatch::default(),
                created_at: clock.now(),
            })
            .await?;
    }

    let policy = TimeoutPolicy::default();
    let requested = if args.expired {
        TimeoutConfigPatch {
            timeout_minutes: Some(policy.min_timeout_minutes),
            ..Default::default()
        }
    } else {
        TimeoutConfigPatch {
            timeout_minutes: Some(1440.0),
            max_duration_minutes: Some(1440.0),
            ..Default::default()
        }
    };
    let timeout = policy.resolve(&requested, &TimeoutConfigPatch::default());
    let metadata: Map<String, Value> = match json!({"platform": "web", "username": "ada"}) {
        Value::Object(map) => map,
        _ => unreachable!("an object literal"),
    };
    let newest = if args.expired {
        clock.now() - chrono::Duration::days(2)
    } else {
        clock.now()
    };
    let spread_ms = 60_000
        * args
            .spread_minutes
            .unwrap_or(if args.expired { 1440 } else { 60 }) as i64;
    let total = args.sessions;
    // The i-th session (0 = oldest) is created at newest - spread + i * spread / total.
    let created_at = move |i: u64| {
        let offset = (i as i128 * spread_ms as i128 / total.max(1) as i128) as i64;
        newest - chrono::Duration::milliseconds(spread_ms - offset)
    };

    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.clamp(1, args.sessions.max(1)) {
        let store: Arc<dyn SessionStore> = store.clone();
        let next = next.clone();
        let metadata = metadata.clone();
        let expired = args.expired;
        workers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let mut session = Session::new(
                    DEMO_AGENT_ID,
                    Uuid::new_v4(),
                    metadata.clone(),
                    timeout,
                    created_at(i),
                );
                if expired {
                    session.notice = Notice::Expired;
                }
                store.insert_session(&session).await?;
                ids.push(session.id);
            }
            anyhow::Ok(ids)
        }));
    }
    let mut ids = Vec::with_capacity(args.sessions as usize);
    for worker in workers {
        ids.extend(worker.await.context("a preload worker panicked")??);
    }
    store.close().await;
    let elapsed = started.elapsed().as_secs_f64();
    let rate = ids.len() as f64 / elapsed.max(1e-9);

    if let Some(path) = &args.ids_out {
        let mut text = String::with_capacity(ids.len() * 37);
        for id in &ids {
            text.push_str(&id.to_string());
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "preloaded {} {} sessions in {elapsed:.2} s ({rate:.0} sessions/s)",
        ids.len(),
        if args.expired { "expired" } else { "live" },
    );
    println!("PRELOAD_RATE={rate:.0}");
    println!("PRELOAD_SECONDS={elapsed:.2}");
    Ok(())
}
