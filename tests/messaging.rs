//! Messages end to end through the SDK: the three transports (and the legacy `mode`), the `sse` frame sequence,
//! replies in the history, the events stream (warnings and expiry driven by the `MockClock`, resuming with
//! `Last-Event-ID`), and agents that answer over HTTP (webhook, OpenAI-compatible), time out, or fail.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_sessions::streams::{BoxedEvents, ExchangeEvent, SessionEvent, SessionEventFrame};
use agent_sessions::types;
use futures::StreamExt;
use poem::web::sse::{Event, SSE};
use poem::{handler, post, EndpointExt, IntoResponse, Route};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::*;

/// The stream ends (after `expired` or `deleted`).
async fn ends<T: std::fmt::Debug>(events: &mut BoxedEvents<T>) {
    let rest = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("the stream ends in time");
    assert!(
        rest.is_none(),
        "expected the end of the stream, got {rest:?}"
    );
}

/// The text frames carry, in their order: the pieces of the reply chunks (`chunks`), or else the contents of the
/// messages.
fn texts(frames: &[SessionEventFrame], chunks: bool) -> Vec<String> {
    let text = |frame: &SessionEventFrame| match &frame.event {
        SessionEvent::Chunk(c) if chunks => Some(c.chunk.clone()),
        SessionEvent::Message(m) if !chunks => Some(m.content.clone()),
        _ => None,
    };
    frames.iter().filter_map(text).collect()
}

/// Events until (and including) the stored agent reply; returns them.
async fn until_reply(events: &mut BoxedEvents<SessionEventFrame>) -> Vec<SessionEventFrame> {
    let mut seen = Vec::new();
    loop {
        let frame = next(events).await;
        let done = matches!(&frame.event, SessionEvent::Message(m) if m.is_agent);
        seen.push(frame);
        if done {
            return seen;
        }
    }
}

#[tokio::test]
async fn websocket_reply_reaches_subscribers_and_history() {
    let (ctx, s) = TestContext::with_session(None).await;
    let id = s.session_id.to_string();
    let mut events = ctx.events(&id).await;

    ctx.advance_minutes(1);
    let request = message("hello over there", types::TransportType::Websocket);
    let sent = ctx.client.send_message().session_id(&id).body(request);
    let sent = sent.send().await.unwrap();
    assert_eq!(sent.status().as_u16(), 201);
    let sent = sent.into_inner();
    assert!(sent.success);
    assert!(
        sent.agent_response.is_none(),
        "websocket answers before the agent"
    );
    assert_eq!(sent.user_message.content, "hello over there");
    assert_eq!(sent.user_message.author_id, s.user_id);
    assert!(sent.session_status.was_renewed);
    assert_eq!(sent.session_status.renewal_count, 1);
    assert!(!sent.session_status.is_near_expiration);
    assert_eq!(
        sent.data.user_message, sent.user_message,
        "data repeats the body for the TypeScript SDK"
    );

    let frames = until_reply(&mut events).await;
    let kinds: Vec<&str> = frames
        .iter()
        .map(|f| match &f.event {
            SessionEvent::Message(m) if m.is_agent => "reply",
            SessionEvent::Message(_) => "message",
            SessionEvent::Session(_) => "session",
            SessionEvent::Chunk(_) => "chunk",
            _ => "other",
        })
        .collect();
    assert_eq!(&kinds[..2], ["message", "session"], "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"reply"));
    let chunks = texts(&frames, true);
    assert!(
        chunks.len() >= 3,
        "the echo agent streams in several chunks: {chunks:?}"
    );
    assert_eq!(chunks.concat(), "Echo: hello over there");
    assert!(frames
        .iter()
        .all(|f| f.id.is_some() == !matches!(f.event, SessionEvent::Chunk(_))));

    let stored = ctx.history(&id).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].id, sent.user_message.id);
    assert!(stored[1].is_agent);
    assert_eq!(stored[1].author_id, ctx.agent_id);
    assert_eq!(stored[1].content, "Echo: hello over there");
}

#[tokio::test]
async fn http_transport_returns_the_reply() {
    let ctx = TestContext::new().await;
    let id = ctx.new_session_id(None).await;
    let request = message("ping", types::TransportType::Http);
    let sent = ctx.client.send_message().session_id(&id).body(request);
    let sent = sent.send().await.unwrap();
    assert_eq!(sent.status().as_u16(), 201);
    let sent = sent.into_inner();
    assert_eq!(sent.agent_response.as_ref().unwrap().text, "Echo: ping");
    assert_eq!(sent.data.agent_response, sent.agent_response);
    assert_eq!(contents(&ctx.history(&id).await), ["ping", "Echo: ping"]);
}

/// A request dropped once its message is on its way to the store (its client left) must still leave the
/// message answered: stored claimed for its reply, with nobody to answer it, it would hold the session's queue
/// (every later message waiting) until its lease ran out.
#[tokio::test]
async fn a_send_dropped_as_its_message_is_stored_is_still_answered() {
    use agent_sessions_server::service::{SendMessage, Transport};
    let (ctx, s) = TestContext::with_session(None).await;
    let id = s.session_id.to_string();
    let mut events = ctx.events(&id).await;
    let mut send = Box::pin(ctx.service.send(
        &id,
        SendMessage {
            transport: Transport::Http,
            content: Ok("left early".into()),
            metadata: Ok(Default::default()),
            attachments: Ok(None),
        },
    ));
    assert!(
        futures::poll!(send.as_mut()).is_pending(),
        "the message's write is under way"
    );
    drop(send);
    let reply = loop {
        if let SessionEvent::Message(m) = next(&mut events).await.event {
            if m.is_agent {
                break m;
            }
        }
    };
    assert_eq!(reply.content, "Echo: left early");
    // The session's queue moves on: the next message is answered at once.
    let request = message("still here", types::TransportType::Http);
    let sent = ctx.client.send_message().session_id(&id).body(request);
    let sent = sent.send().await.unwrap().into_inner();
    assert_eq!(sent.agent_response.unwrap().text, "Echo: still here");
}

#[tokio::test]
async fn sse_transport_streams_the_exchange_and_ends() {
    let ctx = TestContext::new().await;
    let id = ctx.new_session_id(None).await;
    let mut exchange = ctx.exchange(&id, "tell me more").await;
    let ExchangeEvent::UserMessage(user) = next(&mut exchange).await else {
        panic!("user_message comes first")
    };
    assert_eq!(user.content, "tell me more");
    let mut chunks = Vec::new();
    let (reply, response) = loop {
        match next(&mut exchange).await {
            ExchangeEvent::Chunk(c) => {
                assert_eq!(c.index, chunks.len() as u64, "chunks in order");
                chunks.push(c);
            }
            ExchangeEvent::Done(done) => break (done.message, done.agent_response),
            other => panic!("unexpected {other:?}"),
        }
    };
    ends(&mut exchange).await;
    assert!(chunks.len() >= 3);
    assert!(chunks.iter().all(|c| c.message_id == reply.id));
    let text: String = chunks.iter().map(|c| c.chunk.as_str()).collect();
    assert_eq!(text, "Echo: tell me more");
    assert_eq!(reply.content, text);
    assert_eq!(response.text, text);
    assert!(reply.is_agent);
    let stored = ctx.history(&id).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].id, reply.id);
}

#[tokio::test]
async fn legacy_mode_selects_the_transport() {
    let ctx = TestContext::new().await;
    let id = ctx.new_session_id(None).await;
    let url = ctx.url(&format!("/api/messaging/sessions/{id}/messages"));
    let (status, _, body) = raw(
        reqwest::Method::POST,
        &url,
        Some("application/json"),
        json!({"content": "sync please", "mode": "sync"}).to_string(),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(body["agentResponse"]["text"], "Echo: sync please");
    let resp = reqwest::Client::new()
        .post(&url)
        .json(&json!({"content": "stream please", "mode": "stream"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("event: user_message\n"), "{text}");
    assert!(text.contains("event: done\n"), "{text}");
}

#[tokio::test]
async fn send_checks_in_the_documented_order() {
    let ctx = TestContext::new().await;
    let unknown = ctx.url(&format!(
        "/api/messaging/sessions/{}/messages",
        Uuid::new_v4()
    ));
    let post = |url: String, body: Value| async move {
        raw(
            reqwest::Method::POST,
            &url,
            Some("application/json"),
            body.to_string(),
        )
        .await
    };
    // transport, then content type, then the session, then length and metadata.
    assert_error(
        &post(
            unknown.clone(),
            json!({"content": "x", "transport": "carrier-pigeon"}),
        )
        .await,
        400,
        "VALIDATION_ERROR",
    );
    assert_error(
        &post(unknown.clone(), json!({"content": 42})).await,
        400,
        "VALIDATION_ERROR",
    );
    assert_error(
        &post(unknown.clone(), json!({"content": "x".repeat(5000)})).await,
        404,
        "SESSION_NOT_FOUND",
    );
    let s = ctx.create_session(None).await;
    let url = ctx.url(&format!(
        "/api/messaging/sessions/{}/messages",
        s.session_id
    ));
    let too_long = post(url.clone(), json!({"content": "x".repeat(4001)})).await;
    assert_error(&too_long, 400, "VALIDATION_ERROR");
    assert_eq!(too_long.2["error"]["details"]["field"], "content");
    assert_eq!(
        post(url.clone(), json!({"content": "x".repeat(4000)}))
            .await
            .0,
        201
    );
    assert_error(
        &post(url.clone(), json!({"content": "   "})).await,
        400,
        "VALIDATION_ERROR",
    );
    let big = json!({"content": "x", "metadata": {"blob": "y".repeat(11_000)}});
    assert_error(&post(url.clone(), big).await, 400, "VALIDATION_ERROR");
    let bad_attachment =
        json!({"content": "x", "attachments": [{"type": "sticker", "url": "http://a"}]});
    assert_error(
        &post(url.clone(), bad_attachment).await,
        400,
        "VALIDATION_ERROR",
    );
    ctx.advance_minutes(31);
    assert_error(
        &post(url.clone(), json!({"content": "x".repeat(5000)})).await,
        410,
        "SESSION_EXPIRED",
    );
    // Only the one valid message was stored.
    ctx.clock.advance(chrono::Duration::minutes(-31));
    let stored = ctx.history(s.session_id).await;
    assert_eq!(stored.iter().filter(|m| !m.is_agent).count(), 1);
}

#[tokio::test]
async fn attachments_and_metadata_are_stored() {
    let ctx = TestContext::new().await;
    let id = ctx.new_session_id(None).await;
    let mut body = message("see attached", types::TransportType::Http);
    body.attachments = vec![types::MessageAttachment {
        type_: types::AttachmentType::Image,
        url: "https://example.test/cat.png".into(),
        name: Some("cat.png".into()),
        size: Some(1234.0),
        mime_type: Some("image/png".into()),
    }];
    body.metadata.insert("source".into(), "test".into());
    let sent = ctx
        .client
        .send_message()
        .session_id(&id)
        .body(body.clone())
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.user_message.attachments, body.attachments);
    let stored = ctx.history(&id).await;
    assert_eq!(stored[0].attachments, body.attachments);
    assert_eq!(stored[0].metadata["source"], "test");
}

#[tokio::test]
async fn send_renews_and_reports_near_expiration() {
    let ctx = TestContext::new().await;
    let id = ctx
        .new_session_id(Some(types::TimeoutConfigInput {
            timeout_minutes: Some(10.0),
            auto_renew: Some(false),
            ..Default::default()
        }))
        .await;
    ctx.advance_minutes(6);
    let sent = ctx
        .send(&id, "still there?", types::TransportType::Websocket)
        .await;
    assert!(!sent.session_status.was_renewed, "autoRenew off");
    assert!(
        sent.session_status.is_near_expiration,
        "4 minutes left, threshold 5"
    );
    assert_eq!(sent.session_status.renewal_count, 0);

    let renewing = ctx.new_session_id(Some(timeout_minutes(10.0))).await;
    ctx.advance_minutes(6);
    let sent = ctx
        .send(&renewing, "hi", types::TransportType::Websocket)
        .await;
    assert!(sent.session_status.was_renewed);
    assert!(!sent.session_status.is_near_expiration);
    assert_eq!(
        sent.session_status.expires_at,
        ctx.service.now() + chrono::Duration::minutes(10)
    );
}

#[tokio::test]
async fn subscribers_get_a_warning_then_expiry_and_the_stream_ends() {
    let (ctx, s) = TestContext::with_session(Some(timeout_minutes(10.0))).await; // warning threshold 5
    let id = s.session_id.to_string();
    let mut events = ctx.events(&id).await;
    let sweeper = ctx.sweeper();

    ctx.advance_minutes(4);
    assert_eq!(
        sweeper.run_once(ctx.service.now()).await.unwrap().announced,
        0
    );
    ctx.advance_minutes(2); // 4 minutes left
    assert_eq!(
        sweeper.run_once(ctx.service.now()).await.unwrap().announced,
        1
    );
    let warning = next(&mut events).await;
    let SessionEvent::Warning(w) = &warning.event else {
        panic!("expected a warning, got {warning:?}")
    };
    assert_eq!(w.session_id, s.session_id);
    assert_eq!(w.time_remaining, 4 * 60_000);
    assert!(warning.id.is_some());
    // Once: a second pass announces nothing.
    assert_eq!(
        sweeper.run_once(ctx.service.now()).await.unwrap().announced,
        0
    );

    ctx.advance_minutes(4);
    assert_eq!(
        sweeper.run_once(ctx.service.now()).await.unwrap().announced,
        1
    );
    let expired = next(&mut events).await;
    assert!(
        matches!(&expired.event, SessionEvent::Expired(e)
            if e.session_id == s.session_id && e.expired_at == s.created_at + chrono::Duration::minutes(10)),
        "{expired:?}"
    );
    ends(&mut events).await;
    // An expired session refuses new subscribers.
    let err = ctx
        .client
        .session_events(&id, None)
        .await
        .err()
        .expect("410");
    assert_eq!(err.status().map(|s| s.as_u16()), Some(410));
}

#[tokio::test]
async fn renewal_rearms_the_warning() {
    let ctx = TestContext::new().await;
    let id = ctx.new_session_id(Some(timeout_minutes(10.0))).await;
    let sweeper = ctx.sweeper();
    ctx.advance_minutes(6);
    assert_eq!(
        sweeper.run_once(ctx.service.now()).await.unwrap().announced,
        1
    );
    ctx.heartbeat(&id).await;
    assert_eq!(
        sweeper.run_once(ctx.service.now()).await.unwrap().announced,
        0
    );
    ctx.advance_minutes(6);
    assert_eq!(
        sweeper.run_once(ctx.service.now()).await.unwrap().announced,
        1,
        "warned again"
    );
}

#[tokio::test]
async fn resuming_with_last_event_id_misses_nothing() {
    let ctx = TestContext::new().await;
    let id = ctx.new_session_id(None).await;
    for i in 0..3 {
        ctx.send(&id, &format!("m{i}"), types::TransportType::Http)
            .await;
    }
    // A heartbeat's renewal is live only: nobody listened, so nothing of it is replayed.
    ctx.heartbeat(&id).await;
    // Replay everything (after id 0): 3 x (message, session, reply).
    let mut all = ctx.client.session_events(&id, Some(0)).await.unwrap();
    let mut replayed = Vec::new();
    for _ in 0..9 {
        replayed.push(next(&mut all).await);
    }
    let ids: Vec<i64> = replayed
        .iter()
        .map(|f| f.id.expect("stored events have ids"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    assert_eq!(
        texts(&replayed, false),
        ["m0", "Echo: m0", "m1", "Echo: m1", "m2", "Echo: m2"]
    );

    // A client that saw up to the 4th event gets exactly the rest, then live events, with no gap.
    let mut resumed = ctx.client.session_events(&id, Some(ids[3])).await.unwrap();
    for expected in &ids[4..] {
        assert_eq!(next(&mut resumed).await.id, Some(*expected));
    }
    // A heartbeat now reaches both subscribers live, without an id; an explicit renewal is stored, with the
    // next id.
    let renewed = ctx.heartbeat(&id).await;
    let live = next(&mut resumed).await;
    assert!(matches!(live.event, SessionEvent::Session(ref c)
        if c.reason == "renewed" && c.session.renewal_count == renewed.renewal_count));
    assert_eq!(live.id, None, "a heartbeat's renewal has no id");
    assert_eq!(
        next(&mut all).await,
        live,
        "both subscribers see the same event"
    );
    ctx.renew(&id).await;
    let live = next(&mut resumed).await;
    assert!(matches!(live.event, SessionEvent::Session(ref c) if c.reason == "renewed"));
    assert_eq!(live.id, Some(ids[8] + 1));
    let live_on_first = next(&mut all).await;
    assert_eq!(live_on_first, live, "both subscribers see the same event");

    // The raw header works too, and a bad one is a 400.
    let url = ctx.url(&format!("/api/messaging/sessions/{id}/events"));
    let bad = reqwest::Client::new()
        .get(&url)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
}

#[tokio::test]
async fn deletion_is_announced_and_ends_the_stream() {
    let ctx = TestContext::new().await;
    let id = ctx.new_session_id(None).await;
    let mut events = ctx.events(&id).await;
    ctx.delete(&id).await;
    let frame = next(&mut events).await;
    assert_eq!(frame.id, None);
    assert!(matches!(frame.event, SessionEvent::Deleted(d) if d.session_id.to_string() == id));
    ends(&mut events).await;
    assert!(history_is_gone(&ctx, &id).await);
}

async fn history_is_gone(ctx: &TestContext, id: &str) -> bool {
    matches!(
        api_error(ctx.try_history_page(id).await),
        (404, types::ErrorCode::SessionNotFound, _)
    )
}

/// What a local agent server received.
type Received = Arc<Mutex<Vec<Value>>>;

/// A session of a webhook agent at `{url}/hook`.
async fn session_of_hook(ctx: &TestContext, url: &str) -> String {
    let hook = types::AgentBackendInput::webhook(format!("{url}/hook"));
    ctx.session_of(hook).await
}

/// Serves `route` on 127.0.0.1:0; returns its base URL.
async fn serve(route: impl poem::Endpoint + 'static) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(agent_sessions_server::serve(
        listener,
        route,
        std::future::pending(),
    ));
    url
}

#[tokio::test]
async fn a_webhook_agent_answers_through_a_session() {
    #[handler]
    fn hook(
        body: poem::web::Json<Value>,
        received: poem::web::Data<&Received>,
    ) -> poem::web::Json<Value> {
        received.lock().unwrap().push(body.0.clone());
        let text = format!(
            "hook heard: {}",
            body.0["message"]["content"].as_str().unwrap_or_default()
        );
        poem::web::Json(json!({"text": text, "thought": "easy", "actions": ["REPLY"]}))
    }
    let received: Received = Arc::default();
    let url = serve(Route::new().at("/hook", post(hook)).data(received.clone())).await;
    let ctx = TestContext::new().await;
    let agent_id = ctx
        .agent_with(types::AgentBackendInput::webhook(format!("{url}/hook")))
        .await;
    let id = ctx.session_with(agent_id).await.session_id.to_string();
    for content in ["first", "second"] {
        let sent = ctx.send(&id, content, types::TransportType::Http).await;
        let reply = sent.agent_response.unwrap();
        assert_eq!(reply.text, format!("hook heard: {content}"));
        assert_eq!(reply.thought.as_deref(), Some("easy"));
        assert_eq!(reply.actions, vec!["REPLY".to_string()]);
    }
    let calls = received.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1]["agent"]["id"], agent_id.to_string());
    assert_eq!(calls[1]["session"]["sessionId"], id);
    let history: Vec<&str> = calls[1]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        history,
        ["first", "hook heard: first"],
        "earlier messages as context"
    );
    let stored = ctx.history(&id).await;
    assert_eq!(stored[3].content, "hook heard: second");
    assert_eq!(stored[3].metadata["thought"], "easy");
}

#[tokio::test]
async fn an_openai_compatible_agent_answers_through_a_session() {
    #[handler]
    fn completions(
        body: poem::web::Json<Value>,
        received: poem::web::Data<&Received>,
    ) -> poem::Response {
        received.lock().unwrap().push(body.0.clone());
        let last = body.0["messages"].as_array().unwrap().last().unwrap()["content"]
            .as_str()
            .unwrap()
            .to_string();
        let pieces: Vec<String> = vec!["You ".into(), "said: ".into(), last];
        let frames = pieces
            .into_iter()
            .map(|p| Event::message(json!({"choices": [{"delta": {"content": p}}]}).to_string()))
            .chain(std::iter::once(Event::message("[DONE]")));
        SSE::new(futures::stream::iter(frames)).into_response()
    }
    let received: Received = Arc::default();
    let url = serve(
        Route::new()
            .at("/v1/chat/completions", post(completions))
            .data(received.clone()),
    )
    .await;
    let ctx = TestContext::new().await;
    let id = ctx
        .session_of(types::AgentBackend {
            type_: types::AgentBackendType::Openai,
            url: None,
            base_url: Some(format!("{url}/v1")),
            model: Some("tiny-model".into()),
            api_key_env: None,
            system_prompt: Some("Be brief.".into()),
        })
        .await;
    let mut exchange = ctx.exchange(&id, "what is up").await;
    assert!(matches!(
        next(&mut exchange).await,
        ExchangeEvent::UserMessage(_)
    ));
    let mut chunks = Vec::new();
    let done = loop {
        match next(&mut exchange).await {
            ExchangeEvent::Chunk(c) => chunks.push(c.chunk),
            ExchangeEvent::Done(done) => break done.agent_response,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(chunks, ["You ", "said: ", "what is up"]);
    assert_eq!(done.text, "You said: what is up");
    let request = received.lock().unwrap()[0].clone();
    assert_eq!(request["model"], "tiny-model");
    assert_eq!(request["stream"], true);
    assert_eq!(
        request["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(ctx.history(&id).await[1].content, "You said: what is up");
}

#[tokio::test]
async fn a_silent_agent_times_out_on_every_transport() {
    #[handler]
    async fn silent() -> &'static str {
        std::future::pending::<()>().await;
        "never"
    }
    let url = serve(Route::new().at("/hook", post(silent))).await;
    let ctx = TestContext::with_options(TestOptions {
        agent_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let id = session_of_hook(&ctx, &url).await;
    assert_no_reply(&ctx, &id, 504, types::ErrorCode::AgentTimeout).await;
}

#[tokio::test]
async fn a_failing_agent_is_a_502_and_an_error_event() {
    #[handler]
    fn broken() -> poem::Response {
        poem::Response::builder()
            .status(poem::http::StatusCode::INTERNAL_SERVER_ERROR)
            .body("kaboom")
    }
    let url = serve(Route::new().at("/hook", post(broken))).await;
    let ctx = TestContext::new().await;
    let id = session_of_hook(&ctx, &url).await;
    assert_no_reply(&ctx, &id, 502, types::ErrorCode::AgentError).await;
}

/// With an agent that gives no reply, both transports that wait for one fail the same way: `http` with `status`
/// and `code`, `sse` with the user message and then an `error` event of that code. The user messages stay
/// stored; no reply is.
async fn assert_no_reply(ctx: &TestContext, id: &str, status: u16, code: types::ErrorCode) {
    assert_api_error(ctx.try_send(id, "anyone?").await, status, code);
    let mut exchange = ctx.exchange(id, "hello?").await;
    let first = next(&mut exchange).await;
    assert!(matches!(first, ExchangeEvent::UserMessage(_)), "{first:?}");
    let last = next(&mut exchange).await;
    assert!(
        matches!(&last, ExchangeEvent::Error(e) if e.code == code),
        "{last:?}"
    );
    ends(&mut exchange).await;
    assert_eq!(contents(&ctx.history(id).await), ["anyone?", "hello?"]);
}

#[tokio::test]
async fn replies_whose_worker_died_are_recovered() {
    use agent_sessions_server::domain::Message as StoredMessage;
    let (ctx, s) = TestContext::with_session(None).await;
    let id = s.session_id.to_string();
    let mut events = ctx.events(&id).await;
    // Two user messages stored as another instance would, which then died: one claimed and never finished,
    // one never claimed at all.
    let mut stored = Vec::new();
    for content in ["claimed by a dead worker", "never picked up"] {
        let current = ctx.store.get_session(s.session_id).await.unwrap().unwrap();
        let mut next = current.clone();
        next.version += 1;
        let message = StoredMessage {
            id: Uuid::new_v4(),
            seq: 0,
            session_id: s.session_id,
            author_id: s.user_id,
            is_agent: false,
            content: content.into(),
            metadata: Default::default(),
            attachments: None,
            in_reply_to: None,
            created_at: ctx.service.now(),
        };
        let seq = ctx
            .store
            .record_message(&next, current.version, &message, vec![], None)
            .await
            .unwrap();
        assert!(seq.is_some());
        stored.push(message);
    }
    let now = ctx.service.now();
    let claimed = ctx
        .store
        .claim_reply(s.session_id, now, now - chrono::Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(claimed.map(|m| m.id), Some(stored[0].id));
    // While the claim is live nobody else may answer the session, and nothing counts as stalled.
    assert!(ctx
        .store
        .claim_reply(s.session_id, now, now - chrono::Duration::minutes(1))
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        ctx.sweeper()
            .run_once(ctx.service.now())
            .await
            .unwrap()
            .recovered,
        0
    );

    // Past the lease, the sweeper restarts the session's replies: both get answered, in order.
    ctx.advance_minutes(5);
    assert_eq!(
        ctx.sweeper()
            .run_once(ctx.service.now())
            .await
            .unwrap()
            .recovered,
        1
    );
    let mut replies = Vec::new();
    while replies.len() < 2 {
        if let SessionEvent::Message(m) = next(&mut events).await.event {
            assert!(m.is_agent);
            replies.push(m);
        }
    }
    assert_eq!(replies[0].in_reply_to, Some(stored[0].id));
    assert_eq!(replies[0].content, "Echo: claimed by a dead worker");
    assert_eq!(replies[1].in_reply_to, Some(stored[1].id));
    assert_eq!(
        ctx.sweeper()
            .run_once(ctx.service.now())
            .await
            .unwrap()
            .recovered,
        0
    );
}
