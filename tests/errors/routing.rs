//! Framework errors in the API's JSON shape: unknown routes, wrong methods (405 with `Allow`), reserved paths.

use super::*;

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
