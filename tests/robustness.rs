//! One request must never take the server down: out-of-range numbers are clamped with checked arithmetic wherever
//! minutes become durations, and a store that cannot take writes makes the health route say so.

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

async fn post(ctx: &TestContext, path: &str, body: Value) -> Raw {
    ctx.post_json(path, body.to_string()).await
}

async fn health_status(ctx: &TestContext) -> Raw {
    ctx.get_raw("/api/messaging/sessions/health").await
}

/// The one-request outage: a warning threshold of 1e12 minutes overflowed the expiry arithmetic, the panic killed
/// the SQLite writer, and every later write of every client failed. Now it is clamped to the max duration.
#[tokio::test]
async fn a_huge_warning_threshold_is_clamped_and_later_writes_still_work() {
    let ctx = TestContext::new().await;
    let (status, _, body) = post(
        &ctx,
        "/api/messaging/sessions",
        json!({
            "agentId": ctx.agent_id,
            "userId": ctx.agent_id,
            "timeoutConfig": {"warningThresholdMinutes": 1e12}
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let config = &body["timeoutConfig"];
    assert_eq!(
        config["warningThresholdMinutes"],
        config["maxDurationMinutes"]
    );
    assert_eq!(
        body["isNearExpiration"], true,
        "a threshold past the max duration: always near"
    );

    // Every write of every client still works: a heartbeat of that session, and a new session.
    let id = body["sessionId"].as_str().unwrap().to_string();
    let beat = post(
        &ctx,
        &format!("/api/messaging/sessions/{id}/heartbeat"),
        json!({}),
    )
    .await;
    assert_eq!(beat.0, 200, "{}", beat.2);
    ctx.create_session(None).await;
    let (status, _, health) = health_status(&ctx).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("healthy")));
}

/// The sibling conversions: an agent's stored session defaults, a PATCH, and every field at once, far beyond
/// any range, survive creation, renewal and a restart.
#[tokio::test]
async fn huge_minutes_in_agent_defaults_and_patches_never_break_a_write() {
    let ctx = TestContext::new().await;
    let huge = json!({
        "timeoutMinutes": 1e300,
        "maxDurationMinutes": 1e300,
        "warningThresholdMinutes": 1e12
    });
    let (status, _, agent) = post(
        &ctx,
        "/api/agents",
        json!({"name": "huge", "sessionDefaults": huge}),
    )
    .await;
    assert_eq!(status, 201, "{agent}");
    let (status, _, session) = post(
        &ctx,
        "/api/messaging/sessions",
        json!({"agentId": agent["id"], "userId": ctx.agent_id}),
    )
    .await;
    assert_eq!(status, 201, "{session}");
    assert_eq!(session["timeoutConfig"]["timeoutMinutes"], 1440);
    assert_eq!(session["timeoutConfig"]["maxDurationMinutes"], 2880);
    let id = session["sessionId"].as_str().unwrap().to_string();

    let (status, _, patched) = raw(
        Method::PATCH,
        &ctx.url(&format!("/api/messaging/sessions/{id}/timeout")),
        Some("application/json"),
        json!({"warningThresholdMinutes": 1e15, "maxDurationMinutes": -1e300}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    let renewed = post(
        &ctx,
        &format!("/api/messaging/sessions/{id}/renew"),
        json!({}),
    )
    .await;
    assert_eq!(renewed.0, 200, "{}", renewed.2);

    let (dir, db, clock) = ctx.stop().await;
    let ctx = TestContext::start(dir, db, clock, TestOptions::default()).await;
    let (status, _, again) = ctx.get_raw(&format!("/api/messaging/sessions/{id}")).await;
    assert_eq!(status, 200, "{again}");
    ctx.create_session(None).await;
}

/// A server whose store takes no writes is not healthy: the health route answers 503 `SERVICE_UNAVAILABLE`,
/// whose message, like every 5xx's, says nothing of the server's insides (the cause is logged).
#[tokio::test]
async fn health_reports_a_store_that_takes_no_writes() {
    let ctx = TestContext::new().await;
    assert_eq!(health_status(&ctx).await.0, 200);
    ctx.store.close().await;
    let resp = health_status(&ctx).await;
    assert_error(&resp, 503, "SERVICE_UNAVAILABLE");
    let message = resp.2["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("retry later") && !message.contains("closed"),
        "{message}"
    );
}
