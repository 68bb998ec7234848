//! The errors of the agent routes: unknown and deleted agents, bad agent bodies, content type and body size.

use super::*;

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
        assert_field_refused(&ctx, "/api/agents", &body, field).await;
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
