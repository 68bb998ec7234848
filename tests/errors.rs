//! Owns the error contract: every documented 4xx of every operation (status, `error.code`, and the message where
//! the spec fixes it), check order, framework errors (routing, methods, content type, body size, query values) in
//! the API's JSON shape, and a table of malformed requests that must never get plain text, a 5xx, or a side effect.

use agent_sessions::types;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::*;

const SESSIONS: &str = "/api/messaging/sessions";
const MISSING_FIELDS: &str = "Missing required fields: agentId, userId";
const BAD_TIMEOUT: &str =
    "Invalid timeout configuration: Timeout must be between 5 and 1440 minutes";
/// The server's request body limit (64 KiB).
const MAX_BODY: usize = 64 * 1024;
/// The server's metadata limit, in bytes of compact JSON.
const MAX_METADATA: usize = 10_240;

async fn patch_json(ctx: &TestContext, path: &str, body: impl Into<reqwest::Body>) -> Raw {
    raw(
        Method::PATCH,
        &ctx.url(path),
        Some("application/json"),
        body,
    )
    .await
}

fn message(resp: &Raw) -> &str {
    resp.2["error"]["message"].as_str().unwrap_or_default()
}

/// `assert_error` plus the exact message.
fn assert_error_message(resp: &Raw, status: u16, code: &str, msg: &str) {
    assert_error(resp, status, code);
    assert_eq!(message(resp), msg, "message; body: {}", resp.2);
}

/// A metadata object whose compact JSON is exactly `bytes` long (`{"a":"xx…"}`).
fn metadata_of_size(bytes: usize) -> serde_json::Map<String, Value> {
    let map = json!({ "a": "x".repeat(bytes - 8) });
    let Value::Object(map) = map else {
        unreachable!()
    };
    assert_eq!(serde_json::to_vec(&map).unwrap().len(), bytes);
    map
}

/// Stored sessions (active or expired but retained), straight from the service.
async fn session_count(ctx: &TestContext) -> u64 {
    ctx.service
        .list(Default::default(), 1000, 0)
        .await
        .expect("list sessions")
        .counts
        .total
}

async fn agent_count(ctx: &TestContext) -> usize {
    ctx.service.list_agents().await.expect("list agents").len()
}

/// A valid create body for the demo agent, serialized.
fn create_body(ctx: &TestContext) -> Value {
    json!({ "agentId": ctx.agent_id, "userId": Uuid::new_v4() })
}

// ---------------------------------------------------------------------------------------------------------------
// createSession
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn create_with_missing_fields_is_400() {
    let ctx = TestContext::new().await;
    let agent = ctx.agent_id.to_string();
    let user = Uuid::new_v4().to_string();
    let bodies = [
        json!({}),
        json!({ "agentId": agent }),
        json!({ "userId": user }),
        json!({ "agentId": agent, "userId": "" }),
        json!({ "agentId": "", "userId": user }),
        json!({ "agentId": agent, "userId": null }),
        json!({ "agentId": null, "userId": null }),
    ];
    for body in bodies {
        let resp = ctx.post_json(SESSIONS, body.to_string()).await;
        assert_error_message(&resp, 400, "VALIDATION_ERROR", MISSING_FIELDS);
    }
    // The raw `{}` as a client would type it, too.
    let resp = ctx.post_json(SESSIONS, "{}").await;
    assert_error_message(&resp, 400, "VALIDATION_ERROR", MISSING_FIELDS);
    assert_eq!(session_count(&ctx).await, 0);
}

#[tokio::test]
async fn create_checks_missing_fields_before_uuid_format() {
    let ctx = TestContext::new().await;
    // agentId malformed and userId missing: the missing field wins.
    let resp = ctx
        .post_json(SESSIONS, json!({ "agentId": "nope" }).to_string())
        .await;
    assert_error_message(&resp, 400, "VALIDATION_ERROR", MISSING_FIELDS);
    let resp = ctx
        .post_json(
            SESSIONS,
            json!({ "agentId": "nope", "userId": "" }).to_string(),
        )
        .await;
    assert_error_message(&resp, 400, "VALIDATION_ERROR", MISSING_FIELDS);
}

#[tokio::test]
async fn create_with_malformed_uuids_is_400_agent_first() {
    let ctx = TestContext::new().await;
    let agent = ctx.agent_id.to_string();
    let user = Uuid::new_v4();
    let agent_msg = "Invalid UUID format for field 'agentId'";
    let user_msg = "Invalid UUID format for field 'userId'";
    let cases = [
        (json!({ "agentId": "nope", "userId": "bad" }), agent_msg),
        (json!({ "agentId": "nope", "userId": user }), agent_msg),
        (json!({ "agentId": 42, "userId": user }), agent_msg),
        (
            json!({ "agentId": agent.replace('-', ""), "userId": user }),
            agent_msg,
        ),
        (json!({ "agentId": agent, "userId": "bad" }), user_msg),
        (json!({ "agentId": agent, "userId": 7 }), user_msg),
        (
            json!({ "agentId": agent, "userId": format!("{{{user}}}") }),
            user_msg,
        ),
        // Format is checked before the agent lookup: an unknown agent with a bad userId is still a 400.
        (
            json!({ "agentId": Uuid::new_v4(), "userId": "bad" }),
            user_msg,
        ),
    ];
    for (body, expected) in cases {
        let resp = ctx.post_json(SESSIONS, body.to_string()).await;
        assert_error_message(&resp, 400, "VALIDATION_ERROR", expected);
        assert_eq!(
            resp.2["error"]["details"]["field"],
            if expected == agent_msg {
                "agentId"
            } else {
                "userId"
            },
            "details.field for {body}; response {}",
            resp.2
        );
    }
    assert_eq!(session_count(&ctx).await, 0);
}

#[tokio::test]
async fn create_with_unknown_agent_is_404() {
    let ctx = TestContext::new().await;
    let agent = Uuid::new_v4();
    let result = ctx
        .client
        .create_session()
        .body(create_request(agent))
        .send()
        .await;
    let (status, code, msg) = api_error(result);
    assert_eq!(status, 404);
    assert_eq!(code, types::ErrorCode::AgentNotFound);
    assert_eq!(msg, format!("Agent with ID '{agent}' not found"));
    assert_eq!(session_count(&ctx).await, 0);
}

#[tokio::test]
async fn create_checks_agent_before_metadata() {
    let ctx = TestContext::new().await;
    let agent = Uuid::new_v4();
    let result = ctx
        .client
        .create_session()
        .body(types::CreateSessionRequest {
            metadata: metadata_of_size(MAX_METADATA + 1),
            ..create_request(agent)
        })
        .send()
        .await;
    let msg = assert_api_error(result, 404, types::ErrorCode::AgentNotFound);
    assert_eq!(msg, format!("Agent with ID '{agent}' not found"));
    // Also non-object metadata and a wrong-typed timeoutConfig lose to the unknown agent.
    let resp = ctx
        .post_json(
            SESSIONS,
            json!({
                "agentId": agent, "userId": Uuid::new_v4(),
                "metadata": [1], "timeoutConfig": "soon",
            })
            .to_string(),
        )
        .await;
    assert_error(&resp, 404, "AGENT_NOT_FOUND");
}

#[tokio::test]
async fn create_with_oversized_metadata_is_400() {
    let ctx = TestContext::new().await;
    let request = |metadata| types::CreateSessionRequest {
        metadata,
        ..create_request(ctx.agent_id)
    };
    let result = ctx
        .client
        .create_session()
        .body(request(metadata_of_size(MAX_METADATA + 1)))
        .send()
        .await;
    let msg = assert_api_error(result, 400, types::ErrorCode::ValidationError);
    assert!(msg.contains("10240"), "message names the limit: {msg}");
    assert_eq!(session_count(&ctx).await, 0);

    // The limit itself is accepted: the boundary is exact.
    let created = ctx
        .client
        .create_session()
        .body(request(metadata_of_size(MAX_METADATA)))
        .send()
        .await
        .expect("metadata of exactly 10240 bytes is accepted");
    assert_eq!(created.status().as_u16(), 201);
    assert_eq!(session_count(&ctx).await, 1);
}

#[tokio::test]
async fn create_with_non_object_metadata_is_400() {
    let ctx = TestContext::new().await;
    for metadata in [
        json!([1, 2]),
        json!("meta"),
        json!(null),
        json!(3),
        json!(true),
    ] {
        let mut body = create_body(&ctx);
        body["metadata"] = metadata.clone();
        let resp = ctx.post_json(SESSIONS, body.to_string()).await;
        assert_error(&resp, 400, "VALIDATION_ERROR");
        assert_eq!(
            resp.2["error"]["details"]["field"], "metadata",
            "metadata {metadata}: {}",
            resp.2
        );
    }
    assert_eq!(session_count(&ctx).await, 0);
}

#[tokio::test]
async fn create_with_wrongly_typed_timeout_config_is_400() {
    let ctx = TestContext::new().await;
    let configs = [
        // Fields of the wrong type.
        json!({ "timeoutMinutes": "30" }),
        json!({ "timeoutMinutes": null }),
        json!({ "timeoutMinutes": {} }),
        json!({ "timeoutMinutes": [30] }),
        json!({ "timeoutMinutes": true }),
        json!({ "maxDurationMinutes": "60" }),
        json!({ "warningThresholdMinutes": null }),
        json!({ "autoRenew": "true" }),
        json!({ "autoRenew": null }),
        json!({ "autoRenew": 1 }),
        // The config itself not an object.
        json!("30"),
        json!(30),
        json!([]),
        json!(null),
    ];
    for config in configs {
        let mut body = create_body(&ctx);
        body["timeoutConfig"] = config.clone();
        let resp = ctx.post_json(SESSIONS, body.to_string()).await;
        assert_error(&resp, 400, "VALIDATION_ERROR");
        let field = resp.2["error"]["details"]["field"].as_str().unwrap_or("");
        assert!(
            field.starts_with("timeoutConfig"),
            "timeoutConfig {config}: details.field {field:?}; {}",
            resp.2
        );
    }
    assert_eq!(session_count(&ctx).await, 0);
}

#[tokio::test]
async fn create_with_malformed_json_is_400_not_500() {
    let ctx = TestContext::new().await;
    let bodies: [&[u8]; 6] = [
        b"{",
        b"{\"agentId\": ",
        b"not json",
        b"{'agentId': 'x'}",
        b"",
        b"{\"agentId\":\"a\",}",
    ];
    for body in bodies {
        let resp = ctx.post_json(SESSIONS, body.to_vec()).await;
        assert_error(&resp, 400, "VALIDATION_ERROR");
        assert!(
            message(&resp).starts_with("Malformed JSON"),
            "body {:?}: {}",
            String::from_utf8_lossy(body),
            resp.2
        );
    }
    assert_eq!(session_count(&ctx).await, 0);
}

#[tokio::test]
async fn create_without_json_content_type_is_415() {
    let ctx = TestContext::new().await;
    let body = create_body(&ctx).to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
        None,
    ] {
        let resp = raw(Method::POST, &ctx.url(SESSIONS), content_type, body.clone()).await;
        assert_error(&resp, 415, "INVALID_CONTENT_TYPE");
    }
    assert_eq!(session_count(&ctx).await, 0);
    // Control: the same body with a JSON content type (with parameters) creates the session.
    let resp = raw(
        Method::POST,
        &ctx.url(SESSIONS),
        Some("application/json; charset=utf-8"),
        body,
    )
    .await;
    assert_eq!(resp.0, 201, "{}", resp.2);
}

/// A valid create body padded with trailing whitespace (still valid JSON) to exactly `len` bytes.
fn padded_create_body(ctx: &TestContext, len: usize) -> Vec<u8> {
    let mut body = create_body(ctx).to_string().into_bytes();
    assert!(body.len() < len);
    body.resize(len, b' ');
    body
}

#[tokio::test]
async fn create_with_body_over_64k_is_413() {
    let ctx = TestContext::new().await;
    let resp = ctx
        .post_json(SESSIONS, padded_create_body(&ctx, MAX_BODY + 1))
        .await;
    assert_error(&resp, 413, "PAYLOAD_TOO_LARGE");
    let resp = ctx
        .post_json(SESSIONS, padded_create_body(&ctx, 4 * MAX_BODY))
        .await;
    assert_error(&resp, 413, "PAYLOAD_TOO_LARGE");
    assert_eq!(session_count(&ctx).await, 0);
    // The limit itself is accepted.
    let resp = ctx
        .post_json(SESSIONS, padded_create_body(&ctx, MAX_BODY))
        .await;
    assert_eq!(
        resp.0, 201,
        "a body of exactly 64 KiB is accepted: {}",
        resp.2
    );
}

/// The body as a chunked stream of `chunk`-byte pieces, sent without a Content-Length.
fn chunked(body: Vec<u8>, chunk: usize) -> reqwest::Body {
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(chunk).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(futures::stream::iter(pieces))
}

#[tokio::test]
async fn create_with_chunked_body_over_64k_is_413() {
    let ctx = TestContext::new().await;
    let resp = ctx
        .post_json(
            SESSIONS,
            chunked(padded_create_body(&ctx, MAX_BODY + 1), 4096),
        )
        .await;
    assert_error(&resp, 413, "PAYLOAD_TOO_LARGE");
    let resp = ctx
        .post_json(
            SESSIONS,
            chunked(padded_create_body(&ctx, 2 * MAX_BODY), 8192),
        )
        .await;
    assert_error(&resp, 413, "PAYLOAD_TOO_LARGE");
    assert_eq!(session_count(&ctx).await, 0);
    // Control: a chunked body within the limit is read whole and creates the session.
    let resp = ctx
        .post_json(SESSIONS, chunked(padded_create_body(&ctx, MAX_BODY), 1000))
        .await;
    assert_eq!(resp.0, 201, "{}", resp.2);
    assert_eq!(session_count(&ctx).await, 1);
}

// ---------------------------------------------------------------------------------------------------------------
// Session lookups: getSession, sessionHeartbeat, renewSession, updateSessionTimeout, deleteSession
// ---------------------------------------------------------------------------------------------------------------

/// Every by-id operation on `id`, through the SDK, must answer 404 SESSION_NOT_FOUND naming `id`.
async fn assert_session_not_found_everywhere(ctx: &TestContext, id: &str) {
    let expected = format!("Session '{id}' not found");
    let check = |op: &str, (status, code, msg): (u16, types::ErrorCode, String)| {
        assert_eq!(status, 404, "{op} {id:?}");
        assert_eq!(code, types::ErrorCode::SessionNotFound, "{op} {id:?}");
        assert_eq!(msg, expected, "{op} {id:?}");
    };
    let c = &ctx.client;
    check(
        "getSession",
        api_error(c.get_session().session_id(id).send().await),
    );
    check(
        "sessionHeartbeat",
        api_error(c.session_heartbeat().session_id(id).send().await),
    );
    check(
        "renewSession",
        api_error(c.renew_session().session_id(id).send().await),
    );
    check(
        "updateSessionTimeout",
        api_error(
            c.update_session_timeout()
                .session_id(id)
                .body(timeout_minutes(30.0))
                .send()
                .await,
        ),
    );
    check(
        "deleteSession",
        api_error(c.delete_session().session_id(id).send().await),
    );
}

#[tokio::test]
async fn unknown_session_id_is_404_everywhere() {
    let ctx = TestContext::new().await;
    ctx.create_session(None).await;
    assert_session_not_found_everywhere(&ctx, &Uuid::new_v4().to_string()).await;
    assert_eq!(session_count(&ctx).await, 1);
}

#[tokio::test]
async fn malformed_session_id_is_404_never_400() {
    let (ctx, session) = TestContext::with_session(None).await;
    let ids = [
        "not-a-uuid".to_string(),
        "12345".to_string(),
        "x".repeat(36),
        // An existing session's id in non-canonical forms is not that session.
        session.session_id.simple().to_string(),
        format!("{{{}}}", session.session_id),
        format!("urn:uuid:{}", session.session_id),
        format!("{} ", session.session_id),
    ];
    for id in &ids {
        assert_session_not_found_everywhere(&ctx, id).await;
    }
    // The session itself is untouched by all of that.
    let got = ctx.get(session.session_id).await;
    assert_eq!(got.renewal_count, 0);
    assert_eq!(got.expires_at, session.expires_at);
}

/// A path id whose percent-decoding is not UTF-8 fails poem's path extraction; it must still be a 404 like any
/// other unknown id, never a 400.
#[tokio::test]
async fn non_utf8_session_id_is_404() {
    let ctx = TestContext::new().await;
    for (method, suffix) in [
        (Method::GET, ""),
        (Method::DELETE, ""),
        (Method::POST, "/heartbeat"),
        (Method::POST, "/renew"),
    ] {
        let url = ctx.url(&format!("{SESSIONS}/%FF%FE{suffix}"));
        let resp = raw(method, &url, None, "").await;
        assert_error(&resp, 404, "SESSION_NOT_FOUND");
    }
    for method in [Method::GET, Method::DELETE] {
        let resp = raw(method, &ctx.url("/api/agents/%FF%FE"), None, "").await;
        assert_error(&resp, 404, "AGENT_NOT_FOUND");
    }
}

#[tokio::test]
async fn deleted_session_is_404_everywhere() {
    let (ctx, session) = TestContext::with_session(None).await;
    let id = session.session_id.to_string();
    ctx.delete(&id).await;
    assert_session_not_found_everywhere(&ctx, &id).await;
}

// ---------------------------------------------------------------------------------------------------------------
// updateSessionTimeout
// ---------------------------------------------------------------------------------------------------------------

/// The parts of a session a failed request must not change.
fn state(s: &types::Session) -> Value {
    json!({
        "timeoutConfig": serde_json::to_value(&s.timeout_config).unwrap(),
        "expiresAt": s.expires_at,
        "lastActivity": s.last_activity,
        "renewalCount": s.renewal_count,
    })
}

#[tokio::test]
async fn patch_timeout_out_of_range_is_400_and_changes_nothing() {
    let (ctx, session) = TestContext::with_session(Some(timeout_minutes(60.0))).await;
    let before = state(&ctx.get(session.session_id).await);
    ctx.advance_minutes(1);
    for minutes in [4.0, 1441.0, 4.999, 1440.5, 0.0, -30.0] {
        let result = ctx
            .client
            .update_session_timeout()
            .session_id(session.session_id.to_string())
            .body(timeout_minutes(minutes))
            .send()
            .await;
        let (status, code, msg) = api_error(result);
        assert_eq!(status, 400, "timeoutMinutes {minutes}");
        assert_eq!(
            code,
            types::ErrorCode::ValidationError,
            "timeoutMinutes {minutes}"
        );
        assert_eq!(msg, BAD_TIMEOUT, "timeoutMinutes {minutes}");
        let after = state(&ctx.get(session.session_id).await);
        assert_eq!(
            after, before,
            "timeoutMinutes {minutes} changed the session"
        );
    }
    // A rejected timeout rejects the whole patch: the other fields are not applied either.
    let result = ctx
        .client
        .update_session_timeout()
        .session_id(session.session_id.to_string())
        .body(types::TimeoutConfigInput {
            timeout_minutes: Some(4.0),
            auto_renew: Some(false),
            max_duration_minutes: Some(100.0),
            warning_threshold_minutes: Some(2.0),
        })
        .send()
        .await;
    assert_eq!(api_error(result).2, BAD_TIMEOUT);
    assert_eq!(state(&ctx.get(session.session_id).await), before);

    // Control: the bounds themselves are accepted.
    for minutes in [5.0, 1440.0] {
        let updated = ctx
            .client
            .update_session_timeout()
            .session_id(session.session_id.to_string())
            .body(timeout_minutes(minutes))
            .send()
            .await
            .unwrap_or_else(|e| panic!("timeoutMinutes {minutes} is in range: {e:?}"))
            .into_inner();
        assert_eq!(updated.timeout_config.timeout_minutes, minutes);
    }
}

#[tokio::test]
async fn patch_timeout_with_bad_body_is_400_and_changes_nothing() {
    let (ctx, session) = TestContext::with_session(None).await;
    let path = format!("{SESSIONS}/{}/timeout", session.session_id);
    let before = state(&ctx.get(session.session_id).await);
    let bodies: [&[u8]; 12] = [
        b"{",
        b"",
        b"timeoutMinutes=10",
        b"{\"timeoutMinutes\": 10,}",
        b"[]",
        b"\"10\"",
        b"null",
        b"{\"timeoutMinutes\": \"10\"}",
        b"{\"timeoutMinutes\": null}",
        b"{\"autoRenew\": \"false\"}",
        b"{\"timeoutMinutes\": 1e309}",
        b"{\"maxDurationMinutes\": {}}",
    ];
    for body in bodies {
        let resp = patch_json(&ctx, &path, body.to_vec()).await;
        assert_error(&resp, 400, "VALIDATION_ERROR");
        assert_eq!(
            state(&ctx.get(session.session_id).await),
            before,
            "body {:?} changed the session",
            String::from_utf8_lossy(body)
        );
    }
    // Malformed JSON says so.
    let resp = patch_json(&ctx, &path, "{").await;
    assert!(message(&resp).starts_with("Malformed JSON"), "{}", resp.2);
}

#[tokio::test]
async fn patch_timeout_wrong_content_type_is_415_and_too_large_is_413() {
    let (ctx, session) = TestContext::with_session(None).await;
    let url = ctx.url(&format!("{SESSIONS}/{}/timeout", session.session_id));
    let before = state(&ctx.get(session.session_id).await);
    let body = json!({ "timeoutMinutes": 10 }).to_string();
    for content_type in [Some("text/plain"), None] {
        let resp = raw(Method::PATCH, &url, content_type, body.clone()).await;
        assert_error(&resp, 415, "INVALID_CONTENT_TYPE");
    }
    let mut big = body.clone().into_bytes();
    big.resize(MAX_BODY + 1, b' ');
    let resp = raw(Method::PATCH, &url, Some("application/json"), big.clone()).await;
    assert_error(&resp, 413, "PAYLOAD_TOO_LARGE");
    let resp = raw(
        Method::PATCH,
        &url,
        Some("application/json"),
        chunked(big, 4096),
    )
    .await;
    assert_error(&resp, 413, "PAYLOAD_TOO_LARGE");
    assert_eq!(state(&ctx.get(session.session_id).await), before);
}

// ---------------------------------------------------------------------------------------------------------------
// listSessions
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn list_with_bad_query_values_is_400() {
    let ctx = TestContext::new().await;
    ctx.create_session(None).await;
    let queries = [
        "limit=0",
        "limit=abc",
        "limit=5000",
        "limit=1001",
        "limit=-1",
        "limit=1.5",
        "limit=99999999999999999999",
        "offset=-1",
        "offset=x",
        "agentId=not-a-uuid",
        "agentId=",
        "userId=not-a-uuid",
        "userId=%00",
    ];
    for query in queries {
        let resp = ctx.get_raw(&format!("{SESSIONS}?{query}")).await;
        assert_error(&resp, 400, "VALIDATION_ERROR");
        assert!(!message(&resp).is_empty(), "?{query}: {}", resp.2);
    }
    // Through the SDK too (it cannot send 0, but it can send a value over the maximum).
    assert_api_error(
        ctx.client.list_sessions().limit(5000u32).send().await,
        400,
        types::ErrorCode::ValidationError,
    );
    // Control: the bounds are accepted.
    for query in ["limit=1", "limit=1000", "offset=0"] {
        let resp = ctx.get_raw(&format!("{SESSIONS}?{query}")).await;
        assert_eq!(resp.0, 200, "?{query}: {}", resp.2);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Agents
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_agent_is_404_on_get_and_delete() {
    let ctx = TestContext::new().await;
    for id in [Uuid::new_v4().to_string(), "not-a-uuid".to_string()] {
        let expected = format!("Agent with ID '{id}' not found");
        let (status, code, msg) = api_error(ctx.try_agent(&id).await);
        assert_eq!(
            (status, code, msg.as_str()),
            (404, types::ErrorCode::AgentNotFound, expected.as_str()),
            "getAgent {id}"
        );
        let (status, code, msg) = api_error(ctx.try_delete_agent(&id).await);
        assert_eq!(
            (status, code, msg.as_str()),
            (404, types::ErrorCode::AgentNotFound, expected.as_str()),
            "deleteAgent {id}"
        );
    }
    assert_eq!(agent_count(&ctx).await, 1, "the demo agent is untouched");
}

#[tokio::test]
async fn deleted_agent_is_404_and_cannot_get_sessions() {
    let ctx = TestContext::new().await;
    let agent = ctx.create_agent(agent_request("short-lived")).await;
    ctx.delete_agent(agent.id).await;
    assert_api_error(
        ctx.try_agent(agent.id).await,
        404,
        types::ErrorCode::AgentNotFound,
    );
    let msg = assert_api_error(
        ctx.client
            .create_session()
            .body(create_request(agent.id))
            .send()
            .await,
        404,
        types::ErrorCode::AgentNotFound,
    );
    assert_eq!(msg, format!("Agent with ID '{}' not found", agent.id));
}

#[tokio::test]
async fn create_agent_with_bad_body_is_400() {
    let ctx = TestContext::new().await;
    let cases = [
        (json!({}), "name"),
        (json!({ "name": null }), "name"),
        (json!({ "name": "" }), "name"),
        (json!({ "name": "   " }), "name"),
        (json!({ "name": 5 }), "name"),
        (json!({ "name": "x".repeat(101) }), "name"),
        (json!({ "name": "a", "backend": "echo" }), "backend"),
        (json!({ "name": "a", "backend": {} }), "backend.type"),
        (
            json!({ "name": "a", "backend": { "type": "telepathy" } }),
            "backend.type",
        ),
        (
            json!({ "name": "a", "backend": { "type": "webhook" } }),
            "backend.url",
        ),
        (
            json!({ "name": "a", "backend": { "type": "webhook", "url": "ftp://example.com/x" } }),
            "backend.url",
        ),
        (
            json!({ "name": "a", "backend": { "type": "webhook", "url": "not a url" } }),
            "backend.url",
        ),
        (
            json!({ "name": "a", "backend": { "type": "openai", "baseUrl": "http://localhost:1" } }),
            "backend.model",
        ),
        (
            json!({ "name": "a", "sessionDefaults": { "timeoutMinutes": "30" } }),
            "sessionDefaults.timeoutMinutes",
        ),
        (
            json!({ "name": "a", "sessionDefaults": 30 }),
            "sessionDefaults",
        ),
    ];
    for (body, field) in cases {
        let resp = ctx.post_json("/api/agents", body.to_string()).await;
        assert_error(&resp, 400, "VALIDATION_ERROR");
        assert_eq!(
            resp.2["error"]["details"]["field"], field,
            "body {body}: {}",
            resp.2
        );
    }
    let resp = ctx.post_json("/api/agents", "{}").await;
    assert_error_message(
        &resp,
        400,
        "VALIDATION_ERROR",
        "Missing required field: name",
    );
    let resp = ctx
        .post_json(
            "/api/agents",
            json!({ "name": "a", "backend": { "type": "telepathy" } }).to_string(),
        )
        .await;
    assert_error_message(
        &resp,
        400,
        "VALIDATION_ERROR",
        "backend.type must be one of: echo, webhook, openai",
    );
    assert_eq!(agent_count(&ctx).await, 1, "no agent was created");
}

#[tokio::test]
async fn create_webhook_agent_without_url_is_400_through_the_sdk() {
    let ctx = TestContext::new().await;
    let result = ctx
        .client
        .create_agent()
        .body(types::CreateAgentRequest {
            // The agent as read back, without its URL.
            backend: Some(
                types::AgentBackend {
                    type_: types::AgentBackendType::Webhook,
                    url: None,
                    api_key_env: None,
                    base_url: None,
                    model: None,
                    system_prompt: None,
                }
                .into(),
            ),
            ..agent_request("hook")
        })
        .send()
        .await;
    let msg = assert_api_error(result, 400, types::ErrorCode::ValidationError);
    assert!(msg.contains("backend.url"), "{msg}");
    assert_api_error(
        ctx.client
            .create_agent()
            .body(agent_request(""))
            .send()
            .await,
        400,
        types::ErrorCode::ValidationError,
    );
    assert_eq!(agent_count(&ctx).await, 1);
}

#[tokio::test]
async fn create_agent_wrong_content_type_is_415_too_large_is_413_malformed_is_400() {
    let ctx = TestContext::new().await;
    let url = ctx.url("/api/agents");
    let body = json!({ "name": "a" }).to_string();
    for content_type in [Some("text/plain"), None] {
        let resp = raw(Method::POST, &url, content_type, body.clone()).await;
        assert_error(&resp, 415, "INVALID_CONTENT_TYPE");
    }
    let mut big = body.into_bytes();
    big.resize(MAX_BODY + 1, b' ');
    let resp = raw(Method::POST, &url, Some("application/json"), big).await;
    assert_error(&resp, 413, "PAYLOAD_TOO_LARGE");
    let resp = raw(Method::POST, &url, Some("application/json"), "{\"name\":").await;
    assert_error(&resp, 400, "VALIDATION_ERROR");
    assert_eq!(agent_count(&ctx).await, 1);
}

// ---------------------------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_routes_are_404_not_found() {
    let (ctx, session) = TestContext::with_session(None).await;
    let id = session.session_id;
    let cases = [
        (Method::GET, "/nope".to_string()),
        (Method::GET, "/api/messaging/sessionsX".to_string()),
        (Method::GET, "/api/messaging".to_string()),
        (Method::POST, format!("{SESSIONS}/{id}/unknown")),
        (Method::GET, format!("{SESSIONS}/{id}/renew/extra")),
        (Method::GET, "/api/agentsX".to_string()),
    ];
    for (method, path) in cases {
        let resp = raw(
            method.clone(),
            &ctx.url(&path),
            Some("application/json"),
            "{}",
        )
        .await;
        assert_error(&resp, 404, "NOT_FOUND");
        assert!(
            message(&resp).contains(path.as_str()),
            "{method} {path}: message names the route: {}",
            resp.2
        );
    }
}

#[tokio::test]
async fn wrong_methods_are_405() {
    let (ctx, session) = TestContext::with_session(None).await;
    let id = session.session_id;
    // With the `Allow` header RFC 9110 requires: the methods the contract documents for the path.
    let cases = [
        (Method::PUT, SESSIONS.to_string(), "GET, POST"),
        (Method::DELETE, SESSIONS.to_string(), "GET, POST"),
        (Method::PATCH, SESSIONS.to_string(), "GET, POST"),
        (Method::POST, format!("{SESSIONS}/{id}"), "GET, DELETE"),
        (Method::PUT, format!("{SESSIONS}/{id}"), "GET, DELETE"),
        (Method::GET, format!("{SESSIONS}/{id}/renew"), "POST"),
        (Method::GET, format!("{SESSIONS}/{id}/heartbeat"), "POST"),
        (Method::POST, format!("{SESSIONS}/{id}/timeout"), "PATCH"),
        (Method::POST, format!("{SESSIONS}/health"), "GET"),
        (
            Method::TRACE,
            format!("{SESSIONS}/{id}/messages"),
            "GET, POST",
        ),
        (Method::PUT, "/api/agents".to_string(), "GET, POST"),
    ];
    for (method, path, allow) in cases {
        let resp = reqwest::Client::new()
            .request(method.clone(), ctx.url(&path))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 405, "{method} {path}");
        assert_eq!(
            resp.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            body["error"]["code"], "METHOD_NOT_ALLOWED",
            "{method} {path}"
        );
    }
    // None of that touched the session.
    let got = ctx.get(id).await;
    assert_eq!(state(&got), state(&session));
    assert_eq!(session_count(&ctx).await, 1);
}

#[tokio::test]
async fn health_is_reserved_only_for_get() {
    let ctx = TestContext::new().await;
    ctx.create_session(None).await;
    let resp = raw(
        Method::DELETE,
        &ctx.url(&format!("{SESSIONS}/health")),
        None,
        "",
    )
    .await;
    assert_error_message(
        &resp,
        404,
        "SESSION_NOT_FOUND",
        "Session 'health' not found",
    );
    let (status, code, msg) = api_error(ctx.try_delete("health").await);
    assert_eq!(
        (status, code, msg.as_str()),
        (
            404,
            types::ErrorCode::SessionNotFound,
            "Session 'health' not found"
        )
    );

    let resp = ctx.get_raw(&format!("{SESSIONS}/health")).await;
    assert_eq!(resp.0, 200, "{}", resp.2);
    assert!(resp.1.starts_with("application/json"), "{}", resp.1);
    assert_eq!(resp.2["status"], "healthy");
    assert_eq!(resp.2["activeSessions"], 1);
    assert!(resp.2.get("error").is_none(), "{}", resp.2);
    let health = ctx.health().await;
    assert_eq!(health.status, "healthy");
    assert_eq!(health.active_sessions, 1);
}

// ---------------------------------------------------------------------------------------------------------------
// Malformed requests of every kind
// ---------------------------------------------------------------------------------------------------------------

struct Case {
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

fn case(
    method: Method,
    path: impl Into<String>,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
) -> Case {
    Case {
        method,
        path: path.into(),
        content_type,
        body: body.into(),
    }
}

const JSON: Option<&str> = Some("application/json");

/// `depth` nested arrays around `0`.
fn nested(depth: usize) -> String {
    format!("{}0{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn bad_input_never_gets_plain_text_or_a_5xx() {
    let (ctx, session) = TestContext::with_session(None).await;
    let sid = session.session_id;
    let agent = ctx.agent_id;
    let user = Uuid::new_v4();
    let patch = format!("{SESSIONS}/{sid}/timeout");
    let long_id = "a".repeat(4000);
    let with = |extra: &str| format!(r#"{{"agentId":"{agent}","userId":"{user}",{extra}}}"#);

    let cases = vec![
        // Odd methods.
        case(Method::from_bytes(b"PURGE").unwrap(), SESSIONS, None, ""),
        case(
            Method::from_bytes(b"BREW").unwrap(),
            format!("{SESSIONS}/{sid}"),
            None,
            "",
        ),
        case(Method::OPTIONS, SESSIONS, None, ""),
        case(Method::TRACE, format!("{SESSIONS}/{sid}"), None, ""),
        case(Method::PUT, format!("{SESSIONS}/{sid}/timeout"), JSON, "{}"),
        case(Method::DELETE, "/api/agents", None, ""),
        // Bodies that are not JSON objects, or not JSON at all.
        case(Method::POST, SESSIONS, JSON, "{\"agentId\":"),
        case(Method::POST, SESSIONS, JSON, "[]"),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            format!(r#"[{{"agentId":"{agent}","userId":"{user}"}}]"#),
        ),
        case(Method::POST, SESSIONS, JSON, "null"),
        case(Method::POST, SESSIONS, JSON, "\"agentId\""),
        case(Method::POST, SESSIONS, JSON, vec![0xff, 0xfe, 0x00, 0x7b]),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            [
                format!(r#"{{"agentId":"{agent}","userId":""#).as_bytes(),
                &[0xc3, 0x28],
                b"\"}",
            ]
            .concat(),
        ),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            b"{\"agentId\":\"\xc3\x28\",\"userId\":\"\xed\xa0\x80\"}".to_vec(),
        ),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            with(&format!(r#""metadata":{}"#, nested(10_000))),
        ),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000)),
        ),
        case(Method::POST, SESSIONS, JSON, "\u{feff}{}"),
        // Numbers: too big, as strings, ids as numbers.
        case(
            Method::POST,
            SESSIONS,
            JSON,
            with(r#""timeoutConfig":{"timeoutMinutes":1e309}"#),
        ),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            with(r#""timeoutConfig":{"timeoutMinutes":-1e309}"#),
        ),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            with(r#""timeoutConfig":{"timeoutMinutes":"30"}"#),
        ),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            with(r#""timeoutConfig":{"maxDurationMinutes":"NaN"}"#),
        ),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            format!(r#"{{"agentId":{},"userId":"{user}"}}"#, agent.as_u128()),
        ),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            r#"{"agentId":1e400,"userId":123456789012345678901234567890}"#,
        ),
        // Unicode and odd ids in bodies.
        case(
            Method::POST,
            SESSIONS,
            JSON,
            format!(r#"{{"agentId":"{}","userId":"{user}"}}"#, "é".repeat(18)),
        ),
        case(
            Method::POST,
            SESSIONS,
            JSON,
            format!(
                r#"{{"agentId":"{}","userId":"{user}"}}"#,
                agent.to_string().replace('-', "\u{2010}")
            ),
        ),
        // PATCH with bad numbers and bodies.
        case(Method::PATCH, &patch, JSON, r#"{"timeoutMinutes":1e309}"#),
        case(Method::PATCH, &patch, JSON, r#"{"timeoutMinutes":1e308}"#),
        case(Method::PATCH, &patch, JSON, r#"{"timeoutMinutes":"30"}"#),
        case(Method::PATCH, &patch, JSON, r#"{"timeoutMinutes":-0.0001}"#),
        case(Method::PATCH, &patch, JSON, vec![b'{', 0xff, b'}']),
        case(Method::PATCH, &patch, JSON, nested(10_000)),
        case(
            Method::PATCH,
            &patch,
            Some("application/json; charset=utf-8"),
            "[30]",
        ),
        // Odd ids in paths.
        case(Method::GET, format!("{SESSIONS}/%00"), None, ""),
        case(Method::DELETE, format!("{SESSIONS}/%00"), None, ""),
        case(Method::GET, format!("{SESSIONS}/%FF%FE"), None, ""),
        case(
            Method::POST,
            format!("{SESSIONS}/%E2%9C%93/heartbeat"),
            None,
            "",
        ),
        case(Method::POST, format!("{SESSIONS}/🦀/renew"), None, ""),
        case(Method::GET, format!("{SESSIONS}/{long_id}"), None, ""),
        case(Method::DELETE, format!("{SESSIONS}/{long_id}"), None, ""),
        case(
            Method::PATCH,
            format!("{SESSIONS}/{long_id}/timeout"),
            JSON,
            "{}",
        ),
        case(
            Method::GET,
            format!("{SESSIONS}/..%2F..%2Fetc%2Fpasswd"),
            None,
            "",
        ),
        case(Method::GET, format!("{SESSIONS}/{sid}%00"), None, ""),
        case(Method::GET, "/api/agents/%00", None, ""),
        case(Method::DELETE, format!("/api/agents/{long_id}"), None, ""),
        // Odd query values.
        case(Method::GET, format!("{SESSIONS}?limit=1e3"), None, ""),
        case(Method::GET, format!("{SESSIONS}?limit=%00"), None, ""),
        case(
            Method::GET,
            format!("{SESSIONS}?limit=18446744073709551616"),
            None,
            "",
        ),
        case(
            Method::GET,
            format!("{SESSIONS}?offset=18446744073709551616"),
            None,
            "",
        ),
        case(
            Method::GET,
            format!("{SESSIONS}?agentId=%F0%9F%A6%80"),
            None,
            "",
        ),
        // Agents.
        case(Method::POST, "/api/agents", JSON, "[]"),
        case(Method::POST, "/api/agents", JSON, vec![0xff]),
        case(
            Method::POST,
            "/api/agents",
            JSON,
            r#"{"name":"a","sessionDefaults":{"timeoutMinutes":1e309}}"#,
        ),
        case(
            Method::POST,
            "/api/agents",
            JSON,
            format!(r#"{{"name":{}}}"#, nested(10_000)),
        ),
    ];

    let sessions_before = session_count(&ctx).await;
    let agents_before = agent_count(&ctx).await;
    let state_before = state(&ctx.get(sid).await);
    for c in cases {
        let label = format!(
            "{} {} {:?} body {:?}",
            c.method,
            if c.path.len() > 120 {
                &c.path[..120]
            } else {
                &c.path
            },
            c.content_type,
            String::from_utf8_lossy(&c.body[..c.body.len().min(120)])
        );
        let (status, ct, body) = raw(c.method, &ctx.url(&c.path), c.content_type, c.body).await;
        assert!(
            (400..500).contains(&status),
            "{label}: status {status}, body {body}"
        );
        assert!(
            ct.starts_with("application/json"),
            "{label}: content type {ct:?}, status {status}"
        );
        let code = body["error"]["code"].as_str();
        assert!(
            code.is_some_and(|c| !c.is_empty() && c != "INTERNAL_SERVER_ERROR"),
            "{label}: code; body {body}"
        );
        assert!(
            body["error"]["message"].is_string(),
            "{label}: message; body {body}"
        );
        // Stamped by the server's clock (the test's mock), whichever layer refused the request.
        let now = agent_sessions_server::clock::Clock::now(&*ctx.clock)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        assert_eq!(
            body["error"]["timestamp"].as_str(),
            Some(now.as_str()),
            "{label}: timestamp; body {body}"
        );
        assert_eq!(
            session_count(&ctx).await,
            sessions_before,
            "{label}: a session was created or removed"
        );
        assert_eq!(
            agent_count(&ctx).await,
            agents_before,
            "{label}: an agent was created or removed"
        );
    }
    assert_eq!(
        state(&ctx.get(sid).await),
        state_before,
        "the session was changed by a malformed request"
    );
    let health = ctx.health().await;
    assert_eq!(health.status, "healthy");
    assert_eq!(health.active_sessions, 1);
}
