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

#[tokio::test]
async fn the_lane_answers_as_the_stack_does() {
    let ctx = TestContext::with_options(TestOptions::with_keys(&[KEY])).await;
    let key = [("x-api-key", KEY)];
    let created = call(
        &ctx,
        Method::POST,
        "/api/messaging/sessions",
        &key,
        Some(&serde_json::json!({"agentId": ctx.agent_id, "userId": uuid::Uuid::new_v4()})),
    )
    .await;
    assert_eq!(created.status, 201);
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
    let sent = call(
        &ctx,
        Method::POST,
        &messages,
        &key,
        Some(&serde_json::json!({"content": "hello", "metadata": {"n": 1}})),
    )
    .await;
    assert_eq!(sent.status, 201, "{:?}", sent.body);
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
}
