//! The errors of the by-id session operations (getSession, heartbeat, renew, updateSessionTimeout, delete) and
//! of listSessions: unknown, malformed and deleted ids, out-of-range timeouts that change nothing, bad query values.

use super::*;

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

#[tokio::test]
async fn patch_timeout_out_of_range_is_400_and_changes_nothing() {
    let (ctx, session) = TestContext::with_session(Some(timeout_minutes(60.0))).await;
    let before = state(&ctx.get(session.session_id).await);
    ctx.advance_minutes(1);
    for minutes in [4.0, 1441.0, 4.999, 1440.5, 0.0, -30.0] {
        let result = ctx
            .try_update_timeout(session.session_id, timeout_minutes(minutes))
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
        .try_update_timeout(
            session.session_id,
            types::TimeoutConfigInput {
                timeout_minutes: Some(4.0),
                auto_renew: Some(false),
                max_duration_minutes: Some(100.0),
                warning_threshold_minutes: Some(2.0),
            },
        )
        .await;
    assert_eq!(api_error(result).2, BAD_TIMEOUT);
    assert_eq!(state(&ctx.get(session.session_id).await), before);

    // Control: the bounds themselves are accepted.
    for minutes in [5.0, 1440.0] {
        let updated = ctx
            .try_update_timeout(session.session_id, timeout_minutes(minutes))
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
