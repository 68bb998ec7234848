//! The SDK's resuming events stream across server restarts on one store and one address: it reconnects by
//! itself from the last id it delivered, so that events stored while no server was reachable arrive once and in
//! order; events pruned meanwhile come as a typed gap; a reconnection the server refuses ends the stream.

use std::time::Duration;

use agent_sessions::streams::{BoxedEvents, SessionEvent, SessionEventFrame, StreamError};
use agent_sessions::{types, Reconnect};
use futures::StreamExt;

use super::*;

/// Quick retries, and enough of them to outlast two restarts.
fn quick() -> Reconnect {
    Reconnect {
        max_failures: 200,
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    }
}

fn on_port(port: u16, events_kept: u32) -> TestOptions {
    TestOptions {
        port,
        events_kept,
        ..TestOptions::default()
    }
}

/// Stops `ctx`; a server on another port stores an exchange of `contents` each meanwhile, and stops; then a
/// server comes back on `ctx`'s port. Returns it.
async fn away_then_back(ctx: TestContext, id: &str, contents: &[&str], kept: u32) -> TestContext {
    let port = ctx.port();
    let (dir, db, clock) = ctx.stop().await;
    let elsewhere = TestContext::start(dir, db, clock, on_port(0, kept)).await;
    for content in contents {
        elsewhere
            .send(id, content, types::TransportType::Http)
            .await;
    }
    let (dir, db, clock) = elsewhere.stop().await;
    TestContext::start(dir, db, clock, on_port(port, kept)).await
}

async fn resuming(ctx: &TestContext, id: &str) -> BoxedEvents<SessionEventFrame> {
    let events = ctx.client.session_events_reconnecting(id, None, quick());
    events.await.expect("the stream opens")
}

#[tokio::test]
async fn the_resuming_stream_loses_nothing_across_restarts() {
    let ctx = TestContext::new().await;
    let id = ctx.new_session_id(None).await;
    let mut events = resuming(&ctx, &id).await;
    ctx.send(&id, "before", types::TransportType::Http).await;
    let mut seen = sse_until_reply(&mut events).await;

    // Stopped: the stream ends, and the client retries against a closed port meanwhile.
    let ctx = away_then_back(ctx, &id, &["while away"], 1000).await;
    seen.extend(sse_until_reply(&mut events).await);
    ctx.send(&id, "after", types::TransportType::Http).await;
    seen.extend(sse_until_reply(&mut events).await);

    assert_eq!(
        message_texts(&seen),
        [
            "before",
            "Echo: before",
            "while away",
            "Echo: while away",
            "after",
            "Echo: after"
        ]
    );
    assert!(!seen
        .iter()
        .any(|f| matches!(f.event, SessionEvent::ReplayGap(_))));
    let stored = ctx
        .store
        .events_after(id.parse().unwrap(), 0, 100)
        .await
        .unwrap();
    let stored: Vec<i64> = stored.iter().filter_map(|e| e.seq).collect();
    assert_eq!(ids(&seen), stored, "every stored event once, in order");

    // The session expires while no server is up: the reconnection is refused (410) and the stream ends.
    let port = ctx.port();
    let (dir, db, clock) = ctx.stop().await;
    clock.advance(chrono::Duration::minutes(31));
    let _back = TestContext::start(dir, db, clock, on_port(port, 1000)).await;
    let last = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("the stream ends in time");
    match last {
        Some(Err(StreamError::Reconnect(e))) => {
            assert_eq!(e.status().map(|s| s.as_u16()), Some(410), "{e}")
        }
        other => panic!("expected a refused reconnection, got {other:?}"),
    }
    assert!(events.next().await.is_none());
}

#[tokio::test]
async fn a_resuming_stream_that_fell_behind_the_kept_events_gets_a_gap() {
    let ctx = capped_at(3).await;
    let id = ctx.new_session_id(None).await;
    let mut events = resuming(&ctx, &id).await;
    ctx.send(&id, "m0", types::TransportType::Http).await;
    let before = sse_until_reply(&mut events).await;
    let last_seen = *ids(&before).last().unwrap();

    // Two exchanges (6 events) while away, of which the store keeps 3: the second exchange.
    let ctx = away_then_back(ctx, &id, &["m1", "m2"], 3).await;
    let first = next(&mut events).await;
    let SessionEvent::ReplayGap(gap) = &first.event else {
        panic!("a gap first, got {first:?}")
    };
    assert_eq!(first.id, None);
    assert_eq!(gap.requested, last_seen.to_string());
    let after = sse_until_reply(&mut events).await;
    assert_eq!(message_texts(&after), ["m2", "Echo: m2"]);
    assert_eq!(gap.oldest_available, Some(after[0].id.unwrap().to_string()));
    drop(ctx);
}

async fn capped_at(kept: u32) -> TestContext {
    TestContext::with_options(on_port(0, kept)).await
}
