//! The fast lane (`api/fast_lane.rs`) answers the probes, getSession, sessionHeartbeat and getMessages exactly as the whole
//! stack does: the same status, body and headers. A request with the server's own `Origin` always takes the
//! stack (CORS applies to it), so each call is made both ways and the answers compared.

use reqwest::Method;
use serde_json::Value;

use crate::access::{call, Answer};
use crate::support::{TestContext, TestOptions};

const KEY: &str = "lane-key";

/// The header names of an answer, without those that differ per response (date, id, length).
fn header_names(answer: &Answer) -> Vec<String> {
    let mut names: Vec<String> = answer
        .headers
        .keys()
        .map(|n| n.as_str().to_string())
        .filter(|n| !matches!(n.as_str(), "date" | "x-request-id" | "content-length"))
        .collect();
    names.sort();
    names
}

/// The body without the fields that move with time between two calls.
fn steady(mut body: Value) -> Value {
    for field in [
        "timestamp",
        "uptime",
        "timeRemaining",
        "expiresAt",
        "lastActivity",
        "renewalCount",
    ] {
        if let Some(object) = body.as_object_mut() {
            object.remove(field);
        }
    }
    body
}

async fn both_ways(ctx: &TestContext, method: Method, path: &str, credentials: &[(&str, &str)]) {
    let origin = ctx.url("");
    let mut with_origin = credentials.to_vec();
    with_origin.push(("origin", origin.as_str()));
    let lane = call(ctx, method.clone(), path, credentials, None).await;
    let stack = call(ctx, method.clone(), path, &with_origin, None).await;
    assert_eq!(lane.status, stack.status, "{method} {path}");
    assert_eq!(
        steady(lane.body.clone()),
        steady(stack.body.clone()),
        "{method} {path}"
    );
    assert_eq!(header_names(&lane), header_names(&stack), "{method} {path}");
    for name in [
        "content-type",
        "cache-control",
        "content-security-policy",
        "x-content-type-options",
    ] {
        assert_eq!(
            lane.headers.get(name),
            stack.headers.get(name),
            "{name} of {method} {path}"
        );
    }
    assert!(lane.headers.contains_key("x-request-id"), "{method} {path}");
}

/// A new session of the context's agent, created with the key.
async fn create_session(ctx: &TestContext) -> Answer {
    let created = call(
        ctx,
        Method::POST,
        "/api/messaging/sessions",
        &[("x-api-key", KEY)],
        Some(&serde_json::json!({"agentId": ctx.agent_id, "userId": uuid::Uuid::new_v4()})),
    )
    .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    created
}

/// Sends `body` to a session's messages path with the key; the send must be accepted.
async fn send(ctx: &TestContext, messages: &str, body: Value) {
    let sent = call(
        ctx,
        Method::POST,
        messages,
        &[("x-api-key", KEY)],
        Some(&body),
    )
    .await;
    assert_eq!(sent.status, 201, "{:?}", sent.body);
}

#[tokio::test]
async fn the_lane_answers_as_the_stack_does() {
    let ctx = TestContext::with_options(TestOptions::with_keys(&[KEY])).await;
    let key = [("x-api-key", KEY)];
    let created = create_session(&ctx).await;
    let id = created.body["sessionId"].as_str().unwrap().to_string();
    let token = created.body["sessionToken"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {token}");
    let with_token = [("authorization", bearer.as_str())];

    both_ways(&ctx, Method::GET, "/livez", &[]).await;
    both_ways(&ctx, Method::GET, "/readyz", &[]).await;
    both_ways(&ctx, Method::GET, "/api/messaging/sessions/health", &key).await;
    both_ways(&ctx, Method::GET, "/api/messaging/sessions/health", &[]).await;
    let session = format!("/api/messaging/sessions/{id}");
    let heartbeat = format!("{session}/heartbeat");
    let messages = format!("{session}/messages");
    send(
        &ctx,
        &messages,
        serde_json::json!({"content": "hello", "metadata": {"n": 1}}),
    )
    .await;
    for credentials in [&key[..], &with_token[..]] {
        both_ways(&ctx, Method::GET, &session, credentials).await;
        both_ways(&ctx, Method::POST, &heartbeat, credentials).await;
        both_ways(&ctx, Method::GET, &messages, credentials).await;
        both_ways(
            &ctx,
            Method::GET,
            &format!("{messages}?limit=1"),
            credentials,
        )
        .await;
    }
    let page = call(&ctx, Method::GET, &messages, &key, None).await;
    assert_eq!(
        page.body["messages"].as_array().map(Vec::len),
        Some(2),
        "{:?}",
        page.body
    );
    assert_eq!(page.body["messages"][1]["content"], "hello");
    // What the lane leaves to the stack is still answered by it: no credentials, another session's token,
    // an unknown session.
    let other = format!("/api/messaging/sessions/{}", uuid::Uuid::new_v4());
    call(&ctx, Method::GET, &session, &[], None)
        .await
        .assert_error(401, "UNAUTHORIZED", "no credentials");
    call(&ctx, Method::GET, &other, &with_token, None)
        .await
        .assert_error(403, "FORBIDDEN", "another session with a token");
    call(
        &ctx,
        Method::POST,
        &format!("{other}/heartbeat"),
        &key,
        None,
    )
    .await
    .assert_error(404, "SESSION_NOT_FOUND", "an unknown session");
    // Each heartbeat renewed the session once (and the message once): the lane never runs one twice.
    let read = call(&ctx, Method::GET, &session, &key, None).await;
    assert_eq!(read.body["renewalCount"], 5, "{:?}", read.body);
    // A heartbeat's answer is spliced into the session's kept rendering (`api/rendered_sessions.rs`): what it says
    // of the renewal is what a read says next, and the rest is the session as it was.
    for _ in 0..3 {
        let renewed = call(&ctx, Method::POST, &heartbeat, &key, None).await;
        let read = call(&ctx, Method::GET, &session, &key, None).await;
        for field in ["lastActivity", "expiresAt", "renewalCount"] {
            assert_eq!(renewed.body[field], read.body[field], "{field}");
        }
        assert_eq!(steady(renewed.body), steady(read.body));
    }
    let read = call(&ctx, Method::GET, &session, &key, None).await;
    assert_eq!(read.body["renewalCount"], 8, "{:?}", read.body);
}

/// The lane answers a repeated latest page from the body it kept (`api/rendered_pages.rs`): only while it is
/// that session's latest page, so a new message, a reply, another session or a deleted session is never
/// answered from it.
#[tokio::test]
async fn a_kept_page_is_answered_only_while_it_is_the_latest() {
    let ctx = TestContext::with_options(TestOptions::with_keys(&[KEY])).await;
    let key = [("x-api-key", KEY)];
    let origin = ctx.url("");
    let stack_key = [("x-api-key", KEY), ("origin", origin.as_str())];
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let created = create_session(&ctx).await;
        sessions.push(format!(
            "/api/messaging/sessions/{}",
            created.body["sessionId"].as_str().unwrap()
        ));
    }
    let contents = |page: &Answer| -> Vec<String> {
        page.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap().to_string())
            .collect()
    };
    for (n, session) in sessions.iter().enumerate() {
        let messages = format!("{session}/messages");
        for round in 0..3 {
            let content = format!("session {n} message {round}");
            send(&ctx, &messages, serde_json::json!({"content": content})).await;
            // Twice through the lane (the second from the kept body), once through the stack: all three the
            // same page, whose newest messages are this round's and its echo.
            let first = call(&ctx, Method::GET, &messages, &key, None).await;
            let again = call(&ctx, Method::GET, &messages, &key, None).await;
            let stack = call(&ctx, Method::GET, &messages, &stack_key, None).await;
            assert_eq!(first.status, 200);
            assert_eq!(first.body, again.body, "{messages} round {round}");
            assert_eq!(first.body, stack.body, "{messages} round {round}");
            let shown = contents(&again);
            assert_eq!(shown.len(), 2 * (round + 1), "{shown:?}");
            assert_eq!(shown[1], content, "{shown:?}");
            assert!(
                shown.iter().all(|c| c.contains(&format!("session {n} "))),
                "{shown:?}"
            );
        }
    }
    // A deleted session's kept page is never answered.
    let deleted = call(&ctx, Method::DELETE, &sessions[0], &key, None).await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    call(
        &ctx,
        Method::GET,
        &format!("{}/messages", sessions[0]),
        &key,
        None,
    )
    .await
    .assert_error(404, "SESSION_NOT_FOUND", "a deleted session's history");
}

/// A raw POST of `body` to createSession with a key, through the lane (no `Origin`) or the stack (`Origin`).
async fn create_raw(ctx: &TestContext, body: &str, stack: bool, extra: &[(&str, &str)]) -> Answer {
    let mut req = reqwest::Client::new()
        .post(ctx.url("/api/messaging/sessions"))
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .body(body.to_string());
    if stack {
        req = req.header("origin", ctx.url(""));
    }
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    Answer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

#[tokio::test]
async fn creates_take_the_lane_and_hand_back_what_it_refuses() {
    let ctx = TestContext::with_options(TestOptions::with_keys(&[KEY])).await;
    let user = uuid::Uuid::new_v4();
    let body = serde_json::json!({
        "agentId": ctx.agent_id, "userId": user, "metadata": {"platform": "web"},
        "timeoutConfig": {"timeoutMinutes": 12}
    })
    .to_string();
    let lane = create_raw(&ctx, &body, false, &[]).await;
    let stack = create_raw(&ctx, &body, true, &[]).await;
    assert_eq!((lane.status, stack.status), (201, 201), "{:?}", lane.body);
    let keys = |answer: &Answer| -> Vec<String> {
        let mut keys: Vec<String> = answer.body.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&lane), keys(&stack));
    for field in [
        "agentId",
        "userId",
        "metadata",
        "timeoutConfig",
        "renewalCount",
    ] {
        assert_eq!(lane.body[field], stack.body[field], "{field}");
    }
    assert_eq!(lane.body["timeoutConfig"]["timeoutMinutes"], 12);
    assert_ne!(lane.body["sessionId"], stack.body["sessionId"]);
    assert_eq!(header_names(&lane), header_names(&stack));
    assert_eq!(lane.header("content-type"), stack.header("content-type"));
    // The lane's session is a real one, and its token admits it.
    let id = lane.body["sessionId"].as_str().unwrap();
    let bearer = format!("Bearer {}", lane.body["sessionToken"].as_str().unwrap());
    let read = call(
        &ctx,
        Method::GET,
        &format!("/api/messaging/sessions/{id}"),
        &[("authorization", bearer.as_str())],
        None,
    )
    .await;
    assert_eq!(read.status, 200, "{:?}", read.body);
    assert_eq!(read.body["metadata"]["platform"], "web");

    // What the lane reads and then refuses reaches the stack with its body whole: the stack's own answer.
    let unknown_agent =
        serde_json::json!({"agentId": uuid::Uuid::new_v4(), "userId": user}).to_string();
    for refused in [
        "{\"agentId\": ",
        "[1, 2]",
        "{\"userId\": \"a\"}",
        unknown_agent.as_str(),
    ] {
        let lane = create_raw(&ctx, refused, false, &[]).await;
        let stack = create_raw(&ctx, refused, true, &[]).await;
        assert!(lane.status >= 400, "{refused}: {:?}", lane.body);
        assert_eq!(lane.status, stack.status, "{refused}");
        assert_eq!(lane.code(), stack.code(), "{refused}");
        assert_eq!(
            lane.body["error"]["message"], stack.body["error"]["message"],
            "{refused}"
        );
    }
    // An idempotency key is the stack's: the retry answers the first session.
    let keyed = [("idempotency-key", "lane-create-1")];
    let first = create_raw(&ctx, &body, false, &keyed).await;
    let again = create_raw(&ctx, &body, false, &keyed).await;
    assert_eq!((first.status, again.status), (201, 201));
    assert_eq!(first.body["sessionId"], again.body["sessionId"]);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    // Credentials are checked before the body is read: none is a 401, a session token a 403.
    let anonymous = reqwest::Client::new()
        .post(ctx.url("/api/messaging/sessions"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let forbidden = call(
        &ctx,
        Method::POST,
        "/api/messaging/sessions",
        &[("authorization", bearer.as_str())],
        Some(&serde_json::from_str(&body).unwrap()),
    )
    .await;
    forbidden.assert_error(403, "FORBIDDEN", "a session token creating a session");
}
