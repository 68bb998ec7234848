//! The errors of `createSession`: missing and malformed fields in the contract's check order, unknown agents,
//! metadata limits, malformed JSON, content type and body size (with and without a Content-Length).

use super::*;

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
        let field = if expected == agent_msg {
            "agentId"
        } else {
            "userId"
        };
        let resp = assert_field_refused(&ctx, SESSIONS, &body, field).await;
        assert_eq!(message(&resp), expected, "{body}");
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
        body["metadata"] = metadata;
        assert_field_refused(&ctx, SESSIONS, &body, "metadata").await;
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
