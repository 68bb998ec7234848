//! Idempotent sends and creates through the real server: duplicates (concurrent, or retried later) under one
//! `Idempotency-Key` or `clientMessageId` do the work once and get the first answer byte for byte; a key reused
//! for another body is refused; keys belong to one caller; a retry of a first request still in flight waits,
//! or is told the key is in use; a failed first request frees its key; keys expire after 24 hours (by the
//! mock clock) and are purged; on PostgreSQL, a retry on another instance gets the answer of the first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_sessions::streams::ExchangeEvent;
use agent_sessions::types;
use agent_sessions::Client;
use agent_sessions_server::clock::MockClock;
use futures::StreamExt;
use poem::http::StatusCode;
use poem::web::{Data, Json};
use poem::{handler, post, EndpointExt, IntoResponse, Route};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::support::*;

/// A raw answer: status, the `Idempotent-Replayed` header, `Retry-After`, and the body as sent.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    status: u16,
    replayed: bool,
    retry_after: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// Credentials of a raw request.
#[derive(Clone, Copy)]
enum As<'a> {
    Open,
    ApiKey(&'a str),
    Token(&'a str),
}

/// A raw POST of `body` to `path` with an optional `Idempotency-Key`, as `who`.
async fn raw_post(base: &str, path: &str, who: As<'_>, key: Option<&str>, body: &Value) -> Answer {
    let mut request = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request = match who {
        As::Open => request,
        As::ApiKey(k) => request.header("x-api-key", k),
        As::Token(t) => request.header("authorization", format!("Bearer {t}")),
    };
    let response = request.send().await.expect("request sent");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    let retry_after = header("retry-after");
    Answer {
        status: response.status().as_u16(),
        replayed,
        retry_after,
        body: response.text().await.expect("a body"),
    }
}

/// An anonymous send of `body` in session `id` under `key`.
async fn send_open(base: &str, id: &str, key: &str, body: &Value) -> Answer {
    raw_post(base, &messages_path(id), As::Open, Some(key), body).await
}

/// Asserts an answer's status and whether it was a replay.
fn assert_answer(answer: &Answer, status: u16, replayed: bool) {
    assert_eq!(
        (answer.status, answer.replayed),
        (status, replayed),
        "{}",
        answer.body
    );
}

fn messages_path(id: &str) -> String {
    format!("/api/messaging/sessions/{id}/messages")
}

const SESSIONS: &str = "/api/messaging/sessions";

fn create_body(agent_id: Uuid, user_id: Uuid) -> Value {
    json!({"agentId": agent_id, "userId": user_id, "metadata": {"plan": "pro"}})
}

fn new_key() -> String {
    Uuid::new_v4().to_string()
}

/// `n` sends of one body under one key at once, spread over `bases` (instances); their answers.
async fn concurrent_sends(
    bases: &[&str],
    id: &str,
    key: &str,
    body: &Value,
    n: usize,
) -> Vec<Answer> {
    let path = messages_path(id);
    let path = &path;
    let sends = (0..n).map(|i| raw_post(bases[i % bases.len()], path, As::Open, Some(key), body));
    futures::future::join_all(sends).await
}

/// Exactly one of `answers` did the work and the others replayed it: the same status and body for all.
fn one_fresh_and_the_rest_replayed(answers: &[Answer]) {
    let first = &answers[0];
    assert_eq!(first.status, 201, "{}", first.body);
    for answer in answers {
        assert_eq!((answer.status, &answer.body), (first.status, &first.body));
    }
    let fresh = answers.iter().filter(|a| !a.replayed).count();
    assert_eq!(fresh, 1, "one answer is the work's own, the others replays");
}

#[tokio::test]
async fn ten_concurrent_duplicates_of_a_send_store_one_message_and_one_reply() {
    let ctx = TestContext::new().await;
    let id = ctx.new_session_id(None).await;
    let body = json!({"content": "only once, please", "transport": "http"});
    let answers = concurrent_sends(&[&ctx.base_url], &id, &new_key(), &body, 10).await;
    one_fresh_and_the_rest_replayed(&answers);
    assert_eq!(
        answers[0].json()["agentResponse"]["text"],
        "Echo: only once, please"
    );
    let history = ctx.history(&id).await;
    assert_eq!(
        contents(&history),
        ["only once, please", "Echo: only once, please"],
        "one user message and one reply"
    );
}

#[tokio::test]
async fn a_replay_answers_the_first_status_and_body_and_starts_no_agent_turn() {
    let ctx = TestContext::new().await;
    let id = ctx.new_session_id(None).await;
    let key = new_key();
    let send = || {
        let call = ctx
            .client
            .send_message()
            .session_id(&id)
            .idempotency_key(&key);
        call.body(message("hello", types::TransportType::Websocket))
            .send()
    };
    let first = send().await.expect("the first send");
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    // Later, with the session renewed meanwhile: still the first answer, not a new one.
    ctx.advance_minutes(1);
    ctx.heartbeat(&id).await;
    let again = send().await.expect("the retry");
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(again.into_inner(), first.into_inner());
    // Replies come in message order: once this one is answered, a second turn for "hello" would show.
    let later = ctx.send(&id, "later", types::TransportType::Http).await;
    assert_eq!(later.agent_response.unwrap().text, "Echo: later");
    assert_eq!(
        contents(&ctx.history(&id).await),
        ["hello", "Echo: hello", "later", "Echo: later"]
    );
}

#[tokio::test]
async fn create_session_with_a_key_replays_the_same_session() {
    let ctx = TestContext::new().await;
    let key = new_key();
    let request = create_request(ctx.agent_id);
    let create = || {
        let call = ctx.client.create_session().idempotency_key(&key);
        call.body(request.clone()).send()
    };
    let first = create().await.expect("create").into_inner();
    ctx.advance_minutes(5);
    let again = create().await.expect("retry").into_inner();
    assert_eq!(
        again, first,
        "the same session, token and all, as first answered"
    );
    assert_eq!(ctx.stored_sessions().await.total, 1);
    // Concurrent duplicates, raw: one session, one body.
    let body = create_body(ctx.agent_id, Uuid::new_v4());
    let key = new_key();
    let creates = (0..10).map(|_| raw_post(&ctx.base_url, SESSIONS, As::Open, Some(&key), &body));
    let answers = futures::future::join_all(creates).await;
    one_fresh_and_the_rest_replayed(&answers);
    assert_eq!(ctx.stored_sessions().await.total, 2);
}

#[tokio::test]
async fn a_key_reused_for_another_body_is_refused() {
    let ctx = TestContext::new().await;
    let id = ctx.new_session_id(None).await;
    let key = new_key();
    let path = messages_path(&id);
    let first = raw_post(
        &ctx.base_url,
        &path,
        As::Open,
        Some(&key),
        &json!({"content": "a"}),
    )
    .await;
    assert_eq!(first.status, 201);
    // Key order and spacing are not a different body.
    let same: Value = serde_json::from_str(r#"{ "content" : "a" }"#).unwrap();
    assert!(
        raw_post(&ctx.base_url, &path, As::Open, Some(&key), &same)
            .await
            .replayed
    );
    for other in [
        json!({"content": "b"}),
        json!({"content": "a", "transport": "http"}),
    ] {
        let refused = raw_post(&ctx.base_url, &path, As::Open, Some(&key), &other).await;
        assert_eq!(
            (refused.status, refused.code()),
            (422, "IDEMPOTENCY_KEY_REUSED".into())
        );
        assert!(refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&key));
    }
    let created = raw_post(
        &ctx.base_url,
        SESSIONS,
        As::Open,
        Some(&key),
        &create_body(ctx.agent_id, Uuid::new_v4()),
    )
    .await;
    assert_eq!(
        created.status, 201,
        "createSession is another operation: the key is free there"
    );
    let other_user = create_body(ctx.agent_id, Uuid::new_v4());
    let refused = raw_post(&ctx.base_url, SESSIONS, As::Open, Some(&key), &other_user).await;
    assert_eq!(
        (refused.status, refused.code()),
        (422, "IDEMPOTENCY_KEY_REUSED".into())
    );
    assert_eq!(
        ctx.history(&id).await.len(),
        2,
        "the refused sends stored nothing"
    );
    assert_eq!(ctx.stored_sessions().await.total, 2);
}

#[tokio::test]
async fn client_message_id_is_the_headers_alias() {
    let ctx = TestContext::new().await;
    let id = ctx.new_session_id(None).await;
    let key = new_key();
    let first = types::SendMessageRequest {
        client_message_id: Some(key.clone()),
        ..message("aliased", types::TransportType::Websocket)
    };
    let call = ctx.client.send_message().session_id(&id);
    let sent = call
        .body(first.clone())
        .send()
        .await
        .expect("send")
        .into_inner();
    // The key moved to the header, the body otherwise the same: a retry.
    let path = messages_path(&id);
    let body = json!({"content": "aliased", "transport": "websocket"});
    let moved = raw_post(&ctx.base_url, &path, As::Open, Some(&key), &body).await;
    assert!(moved.replayed, "{}", moved.body);
    let moved: types::MessageResponse = serde_json::from_str(&moved.body).unwrap();
    assert_eq!(moved, sent);
    // Both, equal: a retry too.
    let call = ctx
        .client
        .send_message()
        .session_id(&id)
        .idempotency_key(&key);
    assert_eq!(call.body(first).send().await.unwrap().into_inner(), sent);
    // Both, different: refused before anything is stored.
    let both = json!({"content": "aliased", "clientMessageId": "other"});
    let refused = raw_post(&ctx.base_url, &path, As::Open, Some(&key), &both).await;
    assert_eq!(
        (refused.status, refused.code()),
        (400, "VALIDATION_ERROR".into())
    );
    assert_eq!(
        refused.json()["error"]["details"]["field"],
        "clientMessageId"
    );
    for (bad, field) in [
        (
            json!({"content": "x", "clientMessageId": 7}),
            "clientMessageId",
        ),
        (
            json!({"content": "x", "clientMessageId": ""}),
            "clientMessageId",
        ),
        (
            json!({"content": "x", "clientMessageId": "é"}),
            "clientMessageId",
        ),
        (
            json!({"content": "x", "clientMessageId": "spaced "}),
            "clientMessageId",
        ),
    ] {
        let refused = raw_post(&ctx.base_url, &path, As::Open, None, &bad).await;
        assert_eq!(
            (refused.status, refused.code()),
            (400, "VALIDATION_ERROR".into()),
            "{bad}"
        );
        assert_eq!(refused.json()["error"]["details"]["field"], field);
    }
    // A value that is not ASCII, or a key sent twice, is refused, never taken for no key.
    for values in [&[&b"\xe9t\xe9"[..]][..], &[b"one", b"two"]] {
        let mut request = reqwest::Client::new()
            .post(ctx.url(&path))
            .json(&json!({"content": "x"}));
        for value in values {
            let value = reqwest::header::HeaderValue::from_bytes(value).unwrap();
            request = request.header("idempotency-key", value);
        }
        let (status, _, body) = read_raw(request.send().await.unwrap()).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("VALIDATION_ERROR"))
        );
        assert_eq!(body["error"]["details"]["field"], "Idempotency-Key");
    }
    let long = "k".repeat(256);
    let refused = raw_post(
        &ctx.base_url,
        &path,
        As::Open,
        Some(&long),
        &json!({"content": "x"}),
    )
    .await;
    assert_eq!(
        (refused.status, refused.code()),
        (400, "VALIDATION_ERROR".into())
    );
    assert_eq!(
        refused.json()["error"]["details"]["field"],
        "Idempotency-Key"
    );
    assert_eq!(
        contents(&ctx.history(&id).await)[0],
        "aliased",
        "one message however many retries"
    );
    let users = ctx
        .history(&id)
        .await
        .into_iter()
        .filter(|m| !m.is_agent)
        .count();
    assert_eq!(users, 1);
}

#[tokio::test]
async fn keys_belong_to_one_caller() {
    let ctx = TestContext::with_options(TestOptions::with_keys(&["key-one", "key-two"])).await;
    let key = "shared-key";
    let body = create_body(ctx.agent_id, Uuid::new_v4());
    let one = raw_post(
        &ctx.base_url,
        SESSIONS,
        As::ApiKey("key-one"),
        Some(key),
        &body,
    )
    .await;
    let two = raw_post(
        &ctx.base_url,
        SESSIONS,
        As::ApiKey("key-two"),
        Some(key),
        &body,
    )
    .await;
    assert_eq!((one.status, two.status), (201, 201));
    assert!(!two.replayed, "another API key does its own work");
    assert_ne!(one.json()["sessionId"], two.json()["sessionId"]);
    let again = raw_post(
        &ctx.base_url,
        SESSIONS,
        As::ApiKey("key-one"),
        Some(key),
        &body,
    )
    .await;
    assert!(again.replayed);
    assert_eq!(again.body, one.body);

    // On one session, the API key and the session's token are two callers; another session's token sends to
    // its own session.
    let id = one.json()["sessionId"].as_str().unwrap().to_string();
    let token = one.json()["sessionToken"].as_str().unwrap().to_string();
    let other_token = two.json()["sessionToken"].as_str().unwrap().to_string();
    let other_id = two.json()["sessionId"].as_str().unwrap().to_string();
    let hi = json!({"content": "hi", "transport": "http"});
    for who in [As::ApiKey("key-one"), As::Token(&token)] {
        let sent = raw_post(&ctx.base_url, &messages_path(&id), who, Some(key), &hi).await;
        assert_eq!(sent.status, 201, "{}", sent.body);
        assert!(!sent.replayed);
    }
    let sent = raw_post(
        &ctx.base_url,
        &messages_path(&other_id),
        As::Token(&other_token),
        Some(key),
        &hi,
    )
    .await;
    assert_eq!((sent.status, sent.replayed), (201, false));
    let by_token = raw_post(
        &ctx.base_url,
        &messages_path(&id),
        As::Token(&token),
        Some(key),
        &hi,
    )
    .await;
    assert!(by_token.replayed);
    let sessions_history = |id: String| {
        let client = Client::with_api_key(&ctx.base_url, "key-one").unwrap();
        async move {
            let page = client.get_messages().session_id(id).send().await.unwrap();
            page.into_inner().messages.len()
        }
    };
    assert_eq!(sessions_history(id).await, 4, "two sends, two replies");
    assert_eq!(sessions_history(other_id).await, 2);

    // Credentials are checked before the key: no key, no claim.
    let anonymous = raw_post(&ctx.base_url, SESSIONS, As::Open, Some("fresh"), &body).await;
    assert_eq!(
        (anonymous.status, anonymous.code()),
        (401, "UNAUTHORIZED".into())
    );
    let forbidden = raw_post(
        &ctx.base_url,
        SESSIONS,
        As::Token(&token),
        Some("fresh"),
        &body,
    )
    .await;
    assert_eq!(
        (forbidden.status, forbidden.code()),
        (403, "FORBIDDEN".into())
    );
    let fresh = raw_post(
        &ctx.base_url,
        SESSIONS,
        As::ApiKey("key-one"),
        Some("fresh"),
        &body,
    )
    .await;
    assert_eq!((fresh.status, fresh.replayed), (201, false));
}

/// An agent whose replies a test scripts: each call takes the next step.
struct ScriptedAgent {
    url: String,
    /// Signals each call as it arrives.
    called: mpsc::UnboundedReceiver<()>,
}

enum Step {
    /// Answer 500.
    Fail,
    /// Answer this text once the sender fires (or is dropped).
    AnswerAfter(oneshot::Receiver<()>, &'static str),
}

#[derive(Clone)]
struct Script {
    steps: Arc<Mutex<VecDeque<Step>>>,
    called: mpsc::UnboundedSender<()>,
}

impl ScriptedAgent {
    async fn start(steps: Vec<Step>) -> Self {
        #[handler]
        async fn hook(Data(script): Data<&Script>) -> poem::Response {
            let _ = script.called.send(());
            let step = script.steps.lock().unwrap().pop_front();
            match step {
                Some(Step::AnswerAfter(go, text)) => {
                    let _ = go.await;
                    Json(json!({ "text": text })).into_response()
                }
                Some(Step::Fail) | None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            }
        }
        let (called_tx, called) = mpsc::unbounded_channel();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let script = Script {
            steps: Arc::new(Mutex::new(steps.into())),
            called: called_tx,
        };
        let route = Route::new().at("/hook", post(hook)).data(script);
        tokio::spawn(agent_sessions_server::serve(
            listener,
            route,
            std::future::pending(),
        ));
        Self { url, called }
    }

    async fn until_called(&mut self) {
        let called = tokio::time::timeout(WAIT, self.called.recv()).await;
        called.expect("the agent is called").unwrap();
    }
}

#[tokio::test]
async fn a_retry_while_the_first_is_in_flight_waits_or_is_told_the_key_is_in_use() {
    let (release, held) = oneshot::channel();
    let mut agent = ScriptedAgent::start(vec![Step::AnswerAfter(held, "at last")]).await;
    let options = TestOptions {
        // The server's own bounded wait, in real time: the test itself waits for no clock.
        idempotency_wait: Duration::from_millis(200),
        ..TestOptions::default()
    };
    let ctx = TestContext::with_options(options).await;
    let id = ctx
        .session_of(types::AgentBackendInput::webhook(&agent.url))
        .await;
    let key = new_key();
    let body = json!({"content": "slow one", "transport": "http"});
    let (base, path) = (ctx.base_url.clone(), messages_path(&id));
    let first = {
        let (base, path, key, body) = (base.clone(), path.clone(), key.clone(), body.clone());
        tokio::spawn(async move { raw_post(&base, &path, As::Open, Some(&key), &body).await })
    };
    agent.until_called().await;
    let busy = raw_post(&base, &path, As::Open, Some(&key), &body).await;
    assert_eq!(
        (busy.status, busy.code()),
        (409, "IDEMPOTENCY_KEY_IN_USE".into()),
        "{}",
        busy.body
    );
    assert_eq!(busy.retry_after.as_deref(), Some("1"));
    release.send(()).unwrap();
    let first = first.await.unwrap();
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.json()["agentResponse"]["text"], "at last");
    let retry = raw_post(&base, &path, As::Open, Some(&key), &body).await;
    assert_eq!(
        (retry.status, retry.replayed, &retry.body),
        (201, true, &first.body)
    );
    assert_eq!(ctx.history(&id).await.len(), 2);
}

#[tokio::test]
async fn a_failed_first_request_frees_its_key_for_the_retry() {
    // A send whose agent fails: 502, and the retry under the same key does the work again.
    let (go, ready) = oneshot::channel();
    let agent =
        ScriptedAgent::start(vec![Step::Fail, Step::AnswerAfter(ready, "second time")]).await;
    drop(go);
    let ctx = TestContext::new().await;
    let id = ctx
        .session_of(types::AgentBackendInput::webhook(&agent.url))
        .await;
    let key = new_key();
    let body = json!({"content": "try me", "transport": "http"});
    let failed = send_open(&ctx.base_url, &id, &key, &body).await;
    assert_eq!((failed.status, failed.code()), (502, "AGENT_ERROR".into()));
    let retried = send_open(&ctx.base_url, &id, &key, &body).await;
    assert_answer(&retried, 201, false);
    assert_eq!(retried.json()["agentResponse"]["text"], "second time");
    let replayed = send_open(&ctx.base_url, &id, &key, &body).await;
    assert_eq!((replayed.replayed, &replayed.body), (true, &retried.body));
    assert_eq!(
        contents(&ctx.history(&id).await),
        ["try me", "try me", "second time"],
        "the failed attempt's message stays, as without a key"
    );

    // A create refused by a quota, then allowed: the retry creates the session.
    let options = TestOptions {
        quotas: (1, 0),
        ..TestOptions::default()
    };
    let ctx = TestContext::with_options(options).await;
    let user = Uuid::new_v4();
    let body = create_body(ctx.agent_id, user);
    let taken = raw_post(&ctx.base_url, SESSIONS, As::Open, None, &body).await;
    assert_eq!(taken.status, 201);
    let key = new_key();
    let refused = raw_post(&ctx.base_url, SESSIONS, As::Open, Some(&key), &body).await;
    assert_eq!(
        (refused.status, refused.code()),
        (429, "QUOTA_EXCEEDED".into())
    );
    ctx.delete(taken.json()["sessionId"].as_str().unwrap())
        .await;
    let created = raw_post(&ctx.base_url, SESSIONS, As::Open, Some(&key), &body).await;
    assert_answer(&created, 201, false);
}

#[tokio::test]
async fn a_retried_sse_exchange_is_not_streamed_again_but_named() {
    let ctx = TestContext::new().await;
    let id = ctx.new_session_id(None).await;
    let key = new_key();
    let request = types::SendMessageRequest {
        client_message_id: Some(key.clone()),
        ..message("streamed", types::TransportType::Sse)
    };
    let mut exchange = ctx
        .client
        .send_message_stream(&id, request.clone())
        .await
        .unwrap();
    let user_message = match next(&mut exchange).await {
        ExchangeEvent::UserMessage(m) => m,
        other => panic!("expected the user message first, got {other:?}"),
    };
    while let Some(event) = exchange.next().await {
        if matches!(event.unwrap(), ExchangeEvent::Done(_)) {
            break;
        }
    }
    let retry = ctx.client.send_message_stream(&id, request).await;
    let (status, code, message) = api_error(retry);
    assert_eq!((status, code), (409, types::ErrorCode::IdempotencyKeyInUse));
    assert!(message.contains(&user_message.id.to_string()), "{message}");
    let body = json!({"content": "streamed", "transport": "sse"});
    let raw = send_open(&ctx.base_url, &id, &key, &body).await;
    assert_eq!(
        (raw.status, raw.code()),
        (409, "IDEMPOTENCY_KEY_IN_USE".into())
    );
    assert_eq!(
        raw.json()["error"]["details"]["userMessageId"],
        user_message.id.to_string()
    );
    assert_eq!(
        contents(&ctx.history(&id).await),
        ["streamed", "Echo: streamed"]
    );
}

#[tokio::test]
async fn keys_expire_after_24_hours_and_the_sweeper_purges_them() {
    let ctx = TestContext::new().await;
    let body = create_body(ctx.agent_id, Uuid::new_v4());
    let (kept, purged) = (new_key(), new_key());
    let first = raw_post(&ctx.base_url, SESSIONS, As::Open, Some(&kept), &body).await;
    raw_post(&ctx.base_url, SESSIONS, As::Open, Some(&purged), &body).await;
    ctx.advance_minutes(24 * 60 - 1);
    let replayed = raw_post(&ctx.base_url, SESSIONS, As::Open, Some(&kept), &body).await;
    assert_eq!((replayed.replayed, &replayed.body), (true, &first.body));
    ctx.advance_minutes(1);
    let report = ctx.sweeper().run_once(ctx.service.now()).await.unwrap();
    assert_eq!(report.purged_keys, 2);
    let fresh = raw_post(&ctx.base_url, SESSIONS, As::Open, Some(&kept), &body).await;
    assert_eq!((fresh.status, fresh.replayed), (201, false));
    assert_ne!(fresh.json()["sessionId"], first.json()["sessionId"]);
    // A key not yet purged is past its time all the same.
    let other = create_body(ctx.agent_id, Uuid::new_v4());
    let key = new_key();
    raw_post(&ctx.base_url, SESSIONS, As::Open, Some(&key), &other).await;
    ctx.advance_minutes(24 * 60);
    let after = raw_post(&ctx.base_url, SESSIONS, As::Open, Some(&key), &other).await;
    assert_eq!((after.status, after.replayed), (201, false));
}

/// Two instances on one fresh PostgreSQL database sharing a clock; None without PostgreSQL.
async fn two_instances() -> Option<(TestContext, TestContext)> {
    let Some(url) = crate::pg::postgres_url().await else {
        eprintln!("skipping cross-instance idempotency test: no PostgreSQL server");
        return None;
    };
    let clock = Arc::new(MockClock::default());
    let a = TestContext::on_url(&url, clock.clone(), TestOptions::default()).await;
    let b = TestContext::on_url(&url, clock, TestOptions::default()).await;
    Some((a, b))
}

#[tokio::test]
async fn a_retry_on_another_instance_gets_the_first_answer() {
    let Some((a, b)) = two_instances().await else {
        return;
    };
    let id = a.new_session_id(None).await;
    let body = json!({"content": "from a", "transport": "http"});
    let key = new_key();
    let first = send_open(&a.base_url, &id, &key, &body).await;
    assert_answer(&first, 201, false);
    let on_b = send_open(&b.base_url, &id, &key, &body).await;
    assert_eq!(
        (on_b.status, on_b.replayed, &on_b.body),
        (201, true, &first.body)
    );
    let other = json!({"content": "from b", "transport": "http"});
    let refused = send_open(&b.base_url, &id, &key, &other).await;
    assert_eq!(refused.status, 422);

    // Concurrent duplicates over both instances: one message, one reply, one body.
    let body = json!({"content": "racing", "transport": "http"});
    let answers = concurrent_sends(&[&a.base_url, &b.base_url], &id, &new_key(), &body, 10).await;
    one_fresh_and_the_rest_replayed(&answers);
    assert_eq!(
        contents(&b.history(&id).await),
        ["from a", "Echo: from a", "racing", "Echo: racing"]
    );

    // createSession too.
    let create = create_body(a.agent_id, Uuid::new_v4());
    let key = new_key();
    let made = raw_post(&a.base_url, SESSIONS, As::Open, Some(&key), &create).await;
    let again = raw_post(&b.base_url, SESSIONS, As::Open, Some(&key), &create).await;
    assert_eq!((again.replayed, &again.body), (true, &made.body));
}
