//! Replay gaps: once a session's oldest events are pruned (the server keeps its newest `KEPT`), a client that
//! resumes from before them gets a `replay-gap` event naming what it asked for and what is left, then the kept
//! events: on the SSE stream, on the WebSocket, and as the SDK's typed event. Never a silent jump; and no gap
//! for a client that has every pruned event.

use agent_sessions::streams::SessionEvent;
use agent_sessions::types;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::json;

use super::*;

const KEPT: u32 = 4;

async fn capped() -> TestContext {
    TestContext::with_options(TestOptions {
        events_kept: KEPT,
        ..TestOptions::default()
    })
    .await
}

/// A session through three exchanges (9 stored events, of which the newest `KEPT` are kept), and the ids of
/// all 9 as a subscriber saw them live.
async fn pruned_session(ctx: &TestContext) -> (String, Vec<i64>) {
    let id = ctx.new_session_id(None).await;
    let mut live = ctx.events(&id).await;
    let mut seen = Vec::new();
    for i in 0..3 {
        ctx.send(&id, &format!("m{i}"), types::TransportType::Http)
            .await;
        seen.extend(sse_until_reply(&mut live).await);
    }
    let ids = ids(&seen);
    assert_eq!(ids.len(), 9, "{seen:?}");
    let stored = ctx
        .store
        .events_after(id.parse().unwrap(), 0, 100)
        .await
        .unwrap();
    let stored: Vec<i64> = stored.iter().filter_map(|e| e.seq).collect();
    assert_eq!(stored, ids[9 - KEPT as usize..], "only the newest are kept");
    (id, ids)
}

fn gap(requested: i64, oldest: i64) -> SessionEvent {
    SessionEvent::ReplayGap(types::ReplayGap {
        requested: requested.to_string(),
        oldest_available: Some(oldest.to_string()),
    })
}

#[tokio::test]
async fn sse_says_what_was_pruned_before_the_kept_events() {
    let ctx = capped().await;
    let (id, ids) = pruned_session(&ctx).await;
    let kept = &ids[5..];

    let mut resumed = ctx.client.session_events(&id, Some(ids[0])).await.unwrap();
    let first = next(&mut resumed).await;
    assert_eq!((first.id, first.event), (None, gap(ids[0], kept[0])));
    for expected in kept {
        assert_eq!(next(&mut resumed).await.id, Some(*expected));
    }

    // From the very beginning (0) too.
    let mut all = ctx.client.session_events(&id, Some(0)).await.unwrap();
    assert_eq!(next(&mut all).await.event, gap(0, kept[0]));

    // A client that has the last pruned event, or a kept one, misses nothing: no gap.
    let mut whole = ctx.client.session_events(&id, Some(ids[4])).await.unwrap();
    assert_eq!(next(&mut whole).await.id, Some(kept[0]));
    let mut later = ctx.client.session_events(&id, Some(kept[1])).await.unwrap();
    assert_eq!(next(&mut later).await.id, Some(kept[2]));

    // On the wire: `event: replay-gap`, no id of its own, ids as text.
    let url = ctx.url(&format!("/api/messaging/sessions/{id}/events"));
    let response = reqwest::Client::new()
        .get(url)
        .header("Last-Event-ID", ids[1].to_string())
        .send()
        .await
        .unwrap();
    let mut frames = response.bytes_stream().eventsource();
    let frame = tokio::time::timeout(WAIT, frames.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (frame.event.as_str(), frame.id.as_str()),
        ("replay-gap", "")
    );
    let data: serde_json::Value = serde_json::from_str(&frame.data).unwrap();
    assert_eq!(
        data,
        json!({"requested": ids[1].to_string(), "oldestAvailable": kept[0].to_string()})
    );

    // Then live events (which prune the oldest kept one in turn).
    ctx.renew(&id).await;
    assert!(next(&mut resumed).await.id > kept.last().copied());
}

#[tokio::test]
async fn the_websocket_says_what_was_pruned_before_the_kept_events() {
    let ctx = capped().await;
    let (id, ids) = pruned_session(&ctx).await;
    let kept = &ids[5..];

    let mut socket = ws(&ctx, &id, &format!("lastEventId={}", ids[2])).await;
    assert_eq!(
        ws_json(&mut socket).await,
        json!({
            "id": null,
            "event": "replay-gap",
            "data": {"requested": ids[2].to_string(), "oldestAvailable": kept[0].to_string()}
        })
    );
    for expected in kept {
        assert_eq!(ws_frame(&mut socket).await.id, Some(*expected));
    }
}

#[tokio::test]
async fn the_sdks_resuming_stream_surfaces_the_gap_as_a_typed_event() {
    let ctx = capped().await;
    let (id, ids) = pruned_session(&ctx).await;
    let kept = &ids[5..];

    let mut resumed = ctx
        .client
        .session_events_resuming(&id, Some(ids[3]))
        .await
        .unwrap();
    let SessionEvent::ReplayGap(gap) = next(&mut resumed).await.event else {
        panic!("a replay gap first")
    };
    assert_eq!(gap.requested, ids[3].to_string());
    assert_eq!(gap.oldest_available, Some(kept[0].to_string()));
    for expected in kept {
        assert_eq!(next(&mut resumed).await.id, Some(*expected));
    }
}
