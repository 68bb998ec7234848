//! Limits: per-principal rate limits on the `MockClock` (the N+1-th request is 429 with the IETF headers, time
//! restores the allowance, principals do not share buckets), the bound on a session's unanswered messages, and
//! the bounds on open event streams.

use agent_sessions::types;
use agent_sessions_server::auth::{AccessSettings, RateLimitSettings};
use chrono::Duration;
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::support::*;

const HEALTH: &str = "/api/messaging/sessions/health";

fn limited(key: u32, session: u32, anonymous: u32, trust_forwarded_for: bool) -> TestOptions {
    TestOptions {
        access: AccessSettings {
            api_keys: vec![KEY.into(), OTHER_KEY.into()],
            limits: RateLimitSettings {
                key_per_minute: key,
                session_per_minute: session,
                anonymous_per_minute: anonymous,
            },
            trust_forwarded_for,
            ..AccessSettings::default()
        },
        ..TestOptions::default()
    }
}

fn header_u64(answer: &Answer, name: &str) -> u64 {
    answer
        .header(name)
        .unwrap_or_else(|| panic!("no {name} header: {:?}", answer.headers))
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number"))
}

#[tokio::test]
async fn the_limit_plus_one_is_429_with_the_headers_until_the_window_passes() {
    let ctx = TestContext::with_options(limited(3, 0, 0, false)).await;
    let list = |key: &'static str| {
        let ctx = &ctx;
        async move { get_with(ctx, "/api/agents", &[("x-api-key", key)]).await }
    };
    for remaining in [2, 1, 0] {
        let ok = list(KEY).await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert_eq!(header_u64(&ok, "ratelimit-limit"), 3);
        assert_eq!(header_u64(&ok, "ratelimit-remaining"), remaining);
        assert!(header_u64(&ok, "ratelimit-reset") <= 60);
    }
    let refused = list(KEY).await;
    refused.assert_error(429, "RATE_LIMIT_EXCEEDED", "the 4th request in a minute");
    assert_eq!(
        header_u64(&refused, "retry-after"),
        20,
        "one request every 20 s"
    );
    assert_eq!(header_u64(&refused, "ratelimit-remaining"), 0);
    assert_eq!(header_u64(&refused, "ratelimit-limit"), 3);
    assert_eq!(
        list(OTHER_KEY).await.status,
        200,
        "another key has its own bucket"
    );

    ctx.clock.advance(Duration::seconds(19));
    assert_eq!(list(KEY).await.status, 429, "not yet");
    ctx.clock.advance(Duration::seconds(1));
    assert_eq!(list(KEY).await.status, 200, "after Retry-After");
    ctx.clock.advance(Duration::minutes(1));
    let full = list(KEY).await;
    assert_eq!(
        header_u64(&full, "ratelimit-remaining"),
        2,
        "a whole minute refills the bucket"
    );
}

#[tokio::test]
async fn session_tokens_and_anonymous_clients_have_their_own_tighter_buckets() {
    let ctx = TestContext::with_options(limited(0, 2, 2, false)).await;
    let one = ctx.create_session(None).await;
    let two = ctx.create_session(None).await;
    let get = |s: &types::Session| {
        let ctx = &ctx;
        let path = format!("/api/messaging/sessions/{}", s.session_id);
        let auth = format!("Bearer {}", s.session_token.clone().unwrap());
        async move {
            call(
                ctx,
                Method::GET,
                &path,
                &[("authorization", auth.as_str())],
                None,
            )
            .await
        }
    };
    assert_eq!(get(&one).await.status, 200);
    assert_eq!(get(&one).await.status, 200);
    get(&one)
        .await
        .assert_error(429, "RATE_LIMIT_EXCEEDED", "3rd by one session");
    assert_eq!(
        get(&two).await.status,
        200,
        "another session, another bucket"
    );
    // The key is unlimited here: no RateLimit headers on its answers.
    let with_key = get_with(&ctx, "/api/agents", &[("x-api-key", KEY)]).await;
    assert_eq!(with_key.status, 200);
    assert!(with_key.header("ratelimit-limit").is_none());

    // Callers without valid credentials are counted per address where they are served, on the public health
    // check; elsewhere they always get their 401 (never a 429 that would hide why).
    let health = |key: &'static str| {
        let ctx = &ctx;
        async move { get_with(ctx, HEALTH, &[("x-api-key", key)]).await }
    };
    assert_eq!(health("guess").await.status, 200);
    assert_eq!(health("").await.status, 200);
    health("guess").await.assert_error(
        429,
        "RATE_LIMIT_EXCEEDED",
        "the 3rd anonymous health check",
    );
    for _ in 0..5 {
        let guess = get_with(&ctx, "/api/agents", &[("x-api-key", "guess")]).await;
        guess.assert_error(401, "UNAUTHORIZED", "a guess");
    }
}

/// Behind a proxy, `--trust-forwarded-for` buckets anonymous callers by the address the proxy appended;
/// without it, `X-Forwarded-For` is ignored (a client could otherwise pick a fresh bucket per request).
#[tokio::test]
async fn forwarded_addresses_count_only_when_trusted() {
    for trusted in [false, true] {
        let ctx = TestContext::with_options(limited(0, 0, 1, trusted)).await;
        let health = |from: &'static str| {
            let ctx = &ctx;
            let through = [("x-forwarded-for", from)];
            async move { get_with(ctx, HEALTH, &through).await.status }
        };
        assert_eq!(health("203.0.113.7, 198.51.100.1").await, 200);
        let second = health("203.0.113.7, 198.51.100.2").await;
        assert_eq!(
            second == 200,
            trusted,
            "trusted={trusted}: another proxied client"
        );
        assert_eq!(
            health("203.0.113.7, 198.51.100.2").await,
            429,
            "trusted={trusted}"
        );
    }
}

/// A session whose agent has not answered `max_pending_messages` messages refuses more with 429, instead of
/// queueing without bound; nothing is stored for the refused message.
#[tokio::test]
async fn sends_beyond_the_unanswered_bound_get_429() {
    // An agent that takes every request and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let ctx = TestContext::with_options(TestOptions {
        max_pending_messages: 2,
        ..TestOptions::default()
    })
    .await;
    let agent = call(
        &ctx,
        Method::POST,
        "/api/agents",
        &[],
        Some(&json!({"name": "silent", "backend": {"type": "webhook", "url": url}})),
    )
    .await;
    assert_eq!(agent.status, 201, "{}", agent.body);
    let session = call(
        &ctx,
        Method::POST,
        "/api/messaging/sessions",
        &[],
        Some(&json!({"agentId": agent.body["id"], "userId": Uuid::new_v4()})),
    )
    .await;
    let id = session.body["sessionId"].as_str().unwrap().to_string();
    let send = |content: &'static str| {
        let ctx = &ctx;
        let path = format!("/api/messaging/sessions/{id}/messages");
        async move {
            call(
                ctx,
                Method::POST,
                &path,
                &[],
                Some(&json!({"content": content})),
            )
            .await
        }
    };
    assert_eq!(send("one").await.status, 201);
    assert_eq!(send("two").await.status, 201);
    let refused = send("three").await;
    refused.assert_error(429, "RATE_LIMIT_EXCEEDED", "a third unanswered message");
    assert_eq!(refused.body["error"]["details"]["unansweredLimit"], 2);
    assert_eq!(header_u64(&refused, "retry-after"), 1);
    let history = ctx.history_page(&id).await;
    assert_eq!(
        history.messages.len(),
        2,
        "the refused message was not stored"
    );
}

#[tokio::test]
async fn event_streams_are_bounded_per_session_and_in_total() {
    let ctx = TestContext::with_options(TestOptions {
        max_streams: (2, 3),
        ..TestOptions::default()
    })
    .await;
    let a = ctx.new_session_id(None).await;
    let b = ctx.new_session_id(None).await;
    let first = ctx.events(&a).await;
    let _second = ctx.events(&a).await;
    let (status, code, message) = api_error(ctx.client.session_events(&a, None).await);
    assert_eq!(
        (status, code),
        (429, types::ErrorCode::RateLimitExceeded),
        "{message}"
    );
    assert!(
        message.contains("maximum of 2 open event streams"),
        "{message}"
    );
    let _third = ctx.events(&b).await;
    let (status, code, _) = api_error(ctx.client.session_events(&b, None).await);
    assert_eq!((status, code), (503, types::ErrorCode::ServiceUnavailable));
    // A stream whose client leaves gives its slot back.
    drop(first);
    let mut reopened = None;
    for _ in 0..100 {
        match ctx.client.session_events(&a, None).await {
            Ok(stream) => {
                reopened = Some(stream);
                break;
            }
            // The server notices the closed connection at its next write: a session event makes one.
            Err(_) => {
                ctx.heartbeat(&a).await;
                tokio::task::yield_now().await;
            }
        }
    }
    assert!(reopened.is_some(), "the slot came back");
}

/// Quotas: a user's active sessions and a session's stored messages, each refused beyond its bound with 429
/// `QUOTA_EXCEEDED`, which names it; an ended session makes room again.
#[tokio::test]
async fn quotas_of_sessions_per_user_and_messages_per_session() {
    let ctx = TestContext::with_options(TestOptions {
        quotas: (2, 4),
        ..TestOptions::default()
    })
    .await;
    let user = Uuid::new_v4();
    let create = || {
        let ctx = &ctx;
        async move {
            call(
                ctx,
                Method::POST,
                "/api/messaging/sessions",
                &[],
                Some(&json!({"agentId": ctx.agent_id, "userId": user})),
            )
            .await
        }
    };
    let first = create().await;
    assert_eq!(first.status, 201);
    assert_eq!(create().await.status, 201);
    let refused = create().await;
    refused.assert_error(429, "QUOTA_EXCEEDED", "a third session of one user");
    assert!(refused.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("2 active sessions"));
    let other = call(
        &ctx,
        Method::POST,
        "/api/messaging/sessions",
        &[],
        Some(&json!({"agentId": ctx.agent_id, "userId": Uuid::new_v4()})),
    )
    .await;
    assert_eq!(other.status, 201, "another user has a quota of their own");
    let id = first.body["sessionId"].as_str().unwrap().to_string();
    ctx.delete(&id).await;
    assert_eq!(create().await.status, 201, "an ended session makes room");

    // Messages: two exchanges (4 stored messages) fill the session.
    let session = ctx.new_session_id(None).await;
    for i in 0..2 {
        ctx.send(&session, &format!("m{i}"), types::TransportType::Http)
            .await;
    }
    assert_api_error(
        ctx.try_send(&session, "one too many").await,
        429,
        types::ErrorCode::QuotaExceeded,
    );
    let history = ctx.history_page(&session).await;
    assert_eq!(
        history.messages.len(),
        4,
        "nothing stored for the refused message"
    );
}
