//! Owns the error contract: every documented 4xx of every operation (status, `error.code`, and the message where
//! the spec fixes it), check order, framework errors (routing, methods, content type, body size, query values) in
//! the API's JSON shape, and a table of malformed requests that must never get plain text, a 5xx, or a side effect.

use agent_sessions::types;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::*;

mod agents;
mod create;
mod malformed;
mod routing;
mod sessions;

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
    ctx.stored_sessions().await.total
}

async fn agent_count(ctx: &TestContext) -> usize {
    ctx.service.list_agents().await.expect("list agents").len()
}

/// A valid create body for the demo agent, serialized.
fn create_body(ctx: &TestContext) -> Value {
    json!({ "agentId": ctx.agent_id, "userId": Uuid::new_v4() })
}

/// The parts of a session a failed request must not change.
fn state(s: &types::Session) -> Value {
    json!({
        "timeoutConfig": serde_json::to_value(&s.timeout_config).unwrap(),
        "expiresAt": s.expires_at,
        "lastActivity": s.last_activity,
        "renewalCount": s.renewal_count,
    })
}

/// The body as a chunked stream of `chunk`-byte pieces, sent without a Content-Length.
fn chunked(body: Vec<u8>, chunk: usize) -> reqwest::Body {
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(chunk).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(futures::stream::iter(pieces))
}

/// Posts `body` to `path` and checks the answer: a 400 `VALIDATION_ERROR` naming `field` in `details.field`.
async fn assert_field_refused(ctx: &TestContext, path: &str, body: &Value, field: &str) -> Raw {
    let resp = ctx.post_json(path, body.to_string()).await;
    assert_error(&resp, 400, "VALIDATION_ERROR");
    assert_eq!(
        resp.2["error"]["details"]["field"], field,
        "details.field for {body}; response {}",
        resp.2
    );
    resp
}
