//! `/livez` and `/readyz`: public, JSON, and readiness ends when the shutdown begins.

use reqwest::Method;

use crate::access::call;
use crate::support::{TestContext, TestOptions};

#[tokio::test]
async fn probes_are_public_and_readiness_ends_with_the_shutdown() {
    let ctx = TestContext::with_options(TestOptions::with_keys(&["k"])).await;
    let live = call(&ctx, Method::GET, "/livez", &[("x-api-key", "wrong")], None).await;
    assert_eq!(live.status, 200);
    assert_eq!(live.body, serde_json::json!({"status": "ok"}));
    let ready = call(&ctx, Method::GET, "/readyz", &[], None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body, serde_json::json!({"status": "ok"}));
    ctx.service.begin_shutdown();
    let draining = call(&ctx, Method::GET, "/readyz", &[], None).await;
    assert_eq!(draining.status, 503);
    assert_eq!(
        draining.body,
        serde_json::json!({"status": "unavailable", "reason": "draining"})
    );
    let live = call(&ctx, Method::GET, "/livez", &[], None).await;
    assert_eq!(live.status, 200);
    let wrong_method = call(&ctx, Method::POST, "/readyz", &[], None).await;
    wrong_method.assert_error(405, "METHOD_NOT_ALLOWED", "POST /readyz");
}
