//! Browsers: CORS for the configured origins only (preflight and actual requests), and the security headers
//! on every response, with `/docs` still served.

use agent_sessions_server::api::CorsOrigins;
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::support::*;

const PAGE: &str = "https://chat.example.com";
const ELSEWHERE: &str = "https://evil.example.net";

async fn with_cors(origins: CorsOrigins) -> TestContext {
    TestContext::with_options(TestOptions {
        cors: origins,
        ..TestOptions::with_keys(&[KEY])
    })
    .await
}

/// Checks that the list header `header` of `answer` names each of `names` (header names: any case).
fn assert_lists(answer: &Answer, header: &str, names: &[&str], what: &str) {
    let listed = answer.header(header).unwrap_or_default().to_lowercase();
    for name in names {
        assert!(
            listed.contains(name),
            "{what}: {name} not in {header}: {listed}"
        );
    }
}

async fn preflight(ctx: &TestContext, origin: &str, path: &str, method: &str) -> Answer {
    call(
        ctx,
        Method::OPTIONS,
        path,
        &[
            ("origin", origin),
            ("access-control-request-method", method),
            (
                "access-control-request-headers",
                "content-type, authorization",
            ),
        ],
        None,
    )
    .await
}

#[tokio::test]
async fn an_allowed_origin_gets_preflight_and_response_headers() {
    let ctx = with_cors(CorsOrigins::List(vec![PAGE.into()])).await;
    let session = ctx.create_session(None).await;
    let path = format!("/api/messaging/sessions/{}/messages", session.session_id);

    // Preflight on every route, without credentials (browsers send none with it).
    for (route, method) in [
        (path.as_str(), "POST"),
        ("/api/messaging/sessions", "POST"),
        ("/api/agents/x", "DELETE"),
        ("/api/messaging/sessions/x/timeout", "PATCH"),
    ] {
        let answer = preflight(&ctx, PAGE, route, method).await;
        assert!(
            (200..300).contains(&answer.status),
            "{route}: {}",
            answer.status
        );
        assert_eq!(
            answer.header("access-control-allow-origin"),
            Some(PAGE),
            "{route}"
        );
        let methods = answer
            .header("access-control-allow-methods")
            .unwrap_or_default();
        assert!(methods.contains(method), "{route}: {methods}");
        let allowed = [
            "authorization",
            "x-api-key",
            "content-type",
            "last-event-id",
            "idempotency-key",
        ];
        assert_lists(&answer, "access-control-allow-headers", &allowed, route);
    }

    // The page's real request, with the session token the backend handed it.
    let token = session.session_token.unwrap();
    let auth = format!("Bearer {token}");
    let answer = call(
        &ctx,
        Method::POST,
        &path,
        &[("origin", PAGE), ("authorization", &auth)],
        Some(&json!({"content": "from the page", "transport": "http"})),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(answer.header("access-control-allow-origin"), Some(PAGE));
    let exposed = [
        "ratelimit-remaining",
        "ratelimit-limit",
        "ratelimit-reset",
        "retry-after",
        "x-request-id",
        "idempotent-replayed",
    ];
    assert_lists(&answer, "access-control-expose-headers", &exposed, "send");
    // A refusal is readable by the page too.
    let refused = get_with(
        &ctx,
        "/api/agents",
        &[("origin", PAGE), ("authorization", &auth)],
    )
    .await;
    refused.assert_error(403, "FORBIDDEN", "a token on /api/agents");
    assert_eq!(refused.header("access-control-allow-origin"), Some(PAGE));
}

#[tokio::test]
async fn other_origins_get_no_cors_headers() {
    for origins in [CorsOrigins::List(vec![PAGE.into()]), CorsOrigins::None] {
        let ctx = with_cors(origins.clone()).await;
        let answer = preflight(&ctx, ELSEWHERE, "/api/messaging/sessions", "POST").await;
        assert!(
            answer.header("access-control-allow-origin").is_none(),
            "{origins:?}: {:?}",
            answer.headers
        );
        assert!(
            !(200..300).contains(&answer.status),
            "{origins:?}: a preflight without CORS is not a success"
        );
        let answer = get_with(
            &ctx,
            "/api/agents",
            &[("origin", ELSEWHERE), ("x-api-key", KEY)],
        )
        .await;
        assert_eq!(answer.status, 200, "answered as any request");
        assert!(
            answer.header("access-control-allow-origin").is_none(),
            "{origins:?}"
        );
    }
    // `*` admits any origin.
    let ctx = with_cors(CorsOrigins::Any).await;
    let answer = preflight(&ctx, ELSEWHERE, "/api/messaging/sessions", "POST").await;
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some(ELSEWHERE)
    );
}

#[tokio::test]
async fn responses_carry_security_headers_and_the_docs_still_load() {
    let ctx = with_cors(CorsOrigins::None).await;
    let api = call(
        &ctx,
        Method::GET,
        &format!("/api/messaging/sessions/{}", Uuid::new_v4()),
        &[("x-api-key", KEY)],
        None,
    )
    .await;
    assert_eq!(api.status, 404);
    let docs = reqwest::get(ctx.url("/docs")).await.unwrap();
    assert_eq!(docs.status(), 200);
    let docs_headers = docs.headers().clone();
    assert!(
        docs.text().await.unwrap().contains("swagger"),
        "Swagger UI is served"
    );
    for headers in [&api.headers, &docs_headers] {
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert_eq!(headers["x-frame-options"], "DENY");
    }
    assert_eq!(api.headers["cache-control"], "no-store");
    assert!(api.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    assert!(
        docs_headers.get("content-security-policy").is_none(),
        "the docs page runs its scripts"
    );
}
