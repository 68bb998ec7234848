//! `X-Request-Id`: the client's kept (when printable and short) or a new one made, echoed on every response and
//! quoted in every error body.

use reqwest::Method;

use crate::access::call;
use crate::support::{TestContext, TestOptions};

#[tokio::test]
async fn a_given_id_is_echoed_and_quoted_in_errors() {
    let ctx = TestContext::new().await;
    let ok = call(
        &ctx,
        Method::GET,
        "/api/agents",
        &[("x-request-id", "trace-abc 123")],
        None,
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers["x-request-id"], "trace-abc 123");
    let missing = call(
        &ctx,
        Method::GET,
        "/api/messaging/sessions/7c9e6679-7425-40de-944b-e07fc1f90ae7",
        &[("x-request-id", "find-me")],
        None,
    )
    .await;
    missing.assert_error(404, "SESSION_NOT_FOUND", "unknown session");
    assert_eq!(missing.headers["x-request-id"], "find-me");
    assert_eq!(missing.body["error"]["details"]["requestId"], "find-me");
    // Existing details stay beside it.
    let expired_field = call(
        &ctx,
        Method::POST,
        "/api/messaging/sessions",
        &[("x-request-id", "bad-body")],
        Some(&serde_json::json!({"userId": "7c9e6679-7425-40de-944b-e07fc1f90ae7"})),
    )
    .await;
    assert_eq!(expired_field.status, 400);
    assert_eq!(
        expired_field.body["error"]["details"]["requestId"],
        "bad-body"
    );
}

#[tokio::test]
async fn every_response_gets_an_id_and_bad_ones_are_replaced() {
    let ctx = TestContext::with_options(TestOptions::with_keys(&["k"])).await;
    let long = "x".repeat(129);
    for (method, path, given) in [
        (Method::GET, "/nowhere", None),
        (Method::DELETE, "/api/agents", None),
        (Method::GET, "/api/agents", None),
        (Method::GET, "/livez", Some(long.as_str())),
        (Method::GET, "/docs", Some("")),
    ] {
        let headers: Vec<(&str, &str)> = given.map(|g| ("x-request-id", g)).into_iter().collect();
        let answer = call(&ctx, method.clone(), path, &headers, None).await;
        let id = answer.headers["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 36, "{method} {path}: a UUID, not {id:?}");
        assert!(uuid::Uuid::parse_str(&id).is_ok());
        if answer.status >= 400 {
            assert_eq!(
                answer.body["error"]["details"]["requestId"],
                id.as_str(),
                "{method} {path}"
            );
        }
    }
    let refused = call(&ctx, Method::GET, "/api/agents", &[], None).await;
    refused.assert_error(401, "UNAUTHORIZED", "no key");
}
