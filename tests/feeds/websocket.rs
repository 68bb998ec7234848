//! The events feed over a WebSocket: the same frames as the SSE stream (ids, names, payloads), resuming from an
//! id in the header or the query, every refusal as a JSON error before the upgrade, keep-alive pings, and the
//! close codes (1000 after `expired` or `deleted`, 1001 when the server stops).

use std::time::Duration;

use agent_sessions::streams::SessionEvent;
use agent_sessions::types;
use agent_sessions_server::api::CorsOrigins;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::*;

#[tokio::test]
async fn the_websocket_feed_carries_an_exchange_as_the_sse_stream_does() {
    let ctx = TestContext::new().await;
    let id = ctx.new_session_id(None).await;
    let mut sse = ctx.events(&id).await;
    let mut socket = ws(&ctx, &id, "").await;

    ctx.send(&id, "hello both", types::TransportType::Websocket)
        .await;
    let over_sse = sse_until_reply(&mut sse).await;
    let over_ws = ws_until_reply(&mut socket).await;
    assert_eq!(
        over_ws, over_sse,
        "the same events, ids and payloads, in the same order"
    );
    assert_eq!(message_texts(&over_ws), ["hello both", "Echo: hello both"]);
    let chunks = over_ws
        .iter()
        .filter(|f| matches!(f.event, SessionEvent::Chunk(_)))
        .count();
    assert!(chunks >= 3, "the reply streams in chunks: {over_ws:?}");
    assert!(over_ws
        .iter()
        .all(|f| f.id.is_some() != matches!(f.event, SessionEvent::Chunk(_))));

    // The raw message: the id as text, the event's name, the payload as an object.
    ctx.renew(&id).await;
    let raw = ws_json(&mut socket).await;
    let over_sse = next(&mut sse).await;
    assert_eq!(raw["id"], json!(over_sse.id.unwrap().to_string()));
    assert_eq!(raw["event"], "session");
    assert_eq!(raw["data"]["reason"], "renewed");
    assert_eq!(raw["data"]["session"]["sessionId"], json!(id));
}

#[tokio::test]
async fn the_websocket_resumes_after_the_last_event_id_of_its_header_or_query() {
    let ctx = TestContext::new().await;
    let id = ctx.new_session_id(None).await;
    for i in 0..2 {
        ctx.send(&id, &format!("m{i}"), types::TransportType::Http)
            .await;
    }
    // Everything after id 0: 2 x (message, session, reply).
    let mut all = ws(&ctx, &id, "lastEventId=0").await;
    let mut replayed = Vec::new();
    for _ in 0..6 {
        replayed.push(ws_frame(&mut all).await);
    }
    let ids = ids(&replayed);
    assert_eq!(ids.len(), 6);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    assert_eq!(
        message_texts(&replayed),
        ["m0", "Echo: m0", "m1", "Echo: m1"]
    );

    let after = ids[2].to_string();
    let header = [("last-event-id", after.as_str())];
    let mut by_header = try_ws(&ctx, &ws_path(&id, ""), &header)
        .await
        .expect("accepted");
    for expected in &ids[3..] {
        assert_eq!(ws_frame(&mut by_header).await.id, Some(*expected));
    }
    let mut by_query = ws(&ctx, &id, &format!("lastEventId={}", ids[4])).await;
    assert_eq!(ws_frame(&mut by_query).await.id, Some(ids[5]));

    // Then live events, the same on every socket.
    ctx.renew(&id).await;
    let live = ws_frame(&mut all).await;
    assert!(live.id.unwrap() > ids[5]);
    assert_eq!(ws_frame(&mut by_header).await, live);
    assert_eq!(ws_frame(&mut by_query).await, live);

    // A malformed id is refused before the upgrade.
    let refused = try_ws(&ctx, &ws_path(&id, "lastEventId=yesterday"), &[]).await;
    let Err((status, body, _)) = refused else {
        panic!("a malformed id opened the socket")
    };
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("VALIDATION_ERROR"))
    );
}

const KEY: &str = "ws-test-key-0123456789";

/// Asserts a refused handshake was the API's JSON error with this status and code.
fn assert_refused(refusal: Result<Ws, Refusal>, status: u16, code: &str, what: &str) -> Refusal {
    let Err(refusal) = refusal else {
        panic!("{what}: expected {status} {code}, the socket opened");
    };
    let (got, body, headers) = &refusal;
    assert_eq!(
        (*got, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{what}: {body}"
    );
    let content_type = headers["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("application/json"), "{what}");
    assert!(body["error"]["message"].is_string() && body["error"]["timestamp"].is_string());
    refusal
}

#[tokio::test]
async fn every_refusal_is_a_json_error_before_the_upgrade() {
    let ctx = TestContext::with_options(TestOptions {
        max_streams: (1, 512),
        cors: CorsOrigins::List(vec!["https://chat.example".into()]),
        ..TestOptions::with_keys(&[KEY])
    })
    .await;
    let session = ctx.create_session(None).await;
    let id = session.session_id.to_string();
    let token = session.session_token.expect("a session token");
    let other = ctx.create_session(None).await;
    let other_token = other.session_token.expect("a session token");
    let path = ws_path(&id, "");
    let key = [("x-api-key", KEY)];

    let (_, _, headers) =
        assert_refused(try_ws(&ctx, &path, &[]).await, 401, "UNAUTHORIZED", "none");
    assert!(headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let wrong = [("x-api-key", "not-the-key")];
    assert_refused(
        try_ws(&ctx, &path, &wrong).await,
        401,
        "UNAUTHORIZED",
        "wrong key",
    );
    let bearer = format!("Bearer {other_token}");
    let others = [("authorization", bearer.as_str())];
    assert_refused(
        try_ws(&ctx, &path, &others).await,
        403,
        "FORBIDDEN",
        "other token",
    );
    let query = ws_path(&id, &format!("access_token={other_token}"));
    assert_refused(
        try_ws(&ctx, &query, &[]).await,
        403,
        "FORBIDDEN",
        "other ?access_token=",
    );
    let unknown = ws_path(&uuid::Uuid::new_v4().to_string(), "");
    assert_refused(
        try_ws(&ctx, &unknown, &key).await,
        404,
        "SESSION_NOT_FOUND",
        "unknown",
    );
    let foreign = [("x-api-key", KEY), ("origin", "https://elsewhere.example")];
    assert_refused(
        try_ws(&ctx, &path, &foreign).await,
        403,
        "FORBIDDEN",
        "foreign page",
    );

    // A plain GET, not an upgrade.
    let plain = reqwest::Client::new()
        .get(ctx.url(&path))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_error(&read_raw(plain).await, 400, "VALIDATION_ERROR");

    // The session's own token as ?access_token= (what a browser sends), from the server's own origin.
    let own = ws_path(&id, &format!("access_token={token}"));
    let origin = ctx.base_url.clone();
    let mut socket = try_ws(&ctx, &own, &[("origin", origin.as_str())])
        .await
        .expect("its own session's token opens the socket");
    // One stream per session in this server: a second one waits for the first to go.
    let (_, _, headers) = assert_refused(
        try_ws(&ctx, &path, &key).await,
        429,
        "RATE_LIMIT_EXCEEDED",
        "second stream",
    );
    assert!(headers.contains_key("retry-after"));
    let mut open = ctx.slots.watch();
    socket.close(None).await.unwrap();
    tokio::time::timeout(WAIT, open.wait_for(|n| *n == 0))
        .await
        .expect("the slot comes back when the client leaves")
        .unwrap();
    let allowed = [("x-api-key", KEY), ("origin", "https://chat.example")];
    let socket = try_ws(&ctx, &path, &allowed).await;
    drop(socket.expect("the key opens it, from a page of an allowed origin too"));

    // Expired: 410.
    ctx.advance_minutes(31);
    assert_refused(
        try_ws(&ctx, &path, &key).await,
        410,
        "SESSION_EXPIRED",
        "expired",
    );
}

#[tokio::test]
async fn idle_sockets_are_pinged_and_close_normally_after_the_sessions_last_event() {
    let ctx = TestContext::with_options(TestOptions {
        keepalive: Duration::from_millis(20),
        ..TestOptions::default()
    })
    .await;
    let deleted = ctx.new_session_id(None).await;
    let mut socket = ws(&ctx, &deleted, "").await;
    let first = tokio::time::timeout(WAIT, socket.next()).await.unwrap();
    assert!(matches!(first, Some(Ok(Message::Ping(_)))), "{first:?}");

    ctx.delete(&deleted).await;
    let frame = ws_frame(&mut socket).await;
    assert!(matches!(frame.event, SessionEvent::Deleted(_)), "{frame:?}");
    assert_eq!(frame.id, None);
    let close = ws_close(&mut socket).await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Normal);
    assert_eq!(close.reason.as_str(), "session deleted");

    let expiring = ctx.new_session_id(None).await;
    let mut socket = ws(&ctx, &expiring, "").await;
    ctx.advance_minutes(31);
    let pass = ctx.sweeper().run_once(ctx.service.now()).await.unwrap();
    assert_eq!(pass.announced, 1);
    let frame = ws_frame(&mut socket).await;
    assert!(matches!(frame.event, SessionEvent::Expired(_)), "{frame:?}");
    assert!(frame.id.is_some(), "expiry is stored");
    let close = ws_close(&mut socket).await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Normal);
    assert_eq!(close.reason.as_str(), "session expired");
}

#[tokio::test]
async fn a_stopping_server_says_reconnect_and_closes_its_sockets_as_going_away() {
    let ctx = TestContext::new().await;
    let id = ctx.new_session_id(None).await;
    let mut socket = ws(&ctx, &id, "").await;
    ctx.stop().await;
    let last = ws_frame(&mut socket).await;
    assert!(matches!(last.event, SessionEvent::Reconnect(_)), "{last:?}");
    assert_eq!(last.id, None);
    let close = ws_close(&mut socket).await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Away, "reconnect: {close:?}");
}

#[tokio::test]
async fn what_clients_send_is_ignored_and_an_oversized_message_ends_the_socket() {
    let ctx = TestContext::new().await;
    let id = ctx.new_session_id(None).await;
    let mut socket = ws(&ctx, &id, "").await;
    socket.send(Message::text("hello?")).await.unwrap();
    socket.send(Message::Ping(vec![1, 2].into())).await.unwrap();
    assert!(matches!(
        ws_message_or_pong(&mut socket).await,
        Message::Pong(_)
    ));
    ctx.renew(&id).await;
    let frame = ws_frame(&mut socket).await;
    assert!(matches!(frame.event, SessionEvent::Session(_)), "{frame:?}");

    // Clients have nothing to say here: a large message is not buffered, it ends the socket.
    let _ = socket.send(Message::text("x".repeat(64 * 1024))).await;
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    });
    ended.await.expect("the server closes the socket");
    let mut open = ctx.slots.watch();
    tokio::time::timeout(WAIT, open.wait_for(|n| *n == 0))
        .await
        .expect("and frees its slot")
        .unwrap();
}

/// The next message, pongs included (pings excluded).
async fn ws_message_or_pong(socket: &mut Ws) -> Message {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a message arrives in time")
            .expect("the socket goes on")
            .expect("a well-formed message");
        if !matches!(message, Message::Ping(_)) {
            return message;
        }
    }
}
