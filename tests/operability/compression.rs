//! gzip for the documents and the lists when asked; event streams never.

use std::io::Read;

use crate::support::TestContext;

async fn get(ctx: &TestContext, path: &str, encoding: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(ctx.url(path));
    if let Some(encoding) = encoding {
        req = req.header("accept-encoding", encoding);
    }
    req.send().await.expect("answered")
}

fn gunzip(bytes: &[u8]) -> serde_json::Value {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .expect("gzip");
    serde_json::from_str(&text).expect("JSON")
}

#[tokio::test]
async fn documents_and_lists_are_gzipped_when_asked() {
    let ctx = TestContext::new().await;
    ctx.create_session(None).await;
    for path in ["/openapi.json", "/api/messaging/sessions", "/api/agents"] {
        let plain = get(&ctx, path, None).await;
        assert!(plain.headers().get("content-encoding").is_none(), "{path}");
        let plain: serde_json::Value = plain.json().await.unwrap();
        let zipped = get(&ctx, path, Some("gzip")).await;
        assert_eq!(zipped.status(), 200);
        assert_eq!(zipped.headers()["content-encoding"], "gzip", "{path}");
        let bytes = zipped.bytes().await.unwrap();
        let mut unzipped = gunzip(&bytes);
        let mut plain = plain;
        // A list's server time moves between the two requests only with the mock clock, which stands still.
        if let (Some(a), Some(b)) = (unzipped.as_object_mut(), plain.as_object_mut()) {
            a.remove("timestamp");
            b.remove("timestamp");
        }
        assert_eq!(unzipped, plain, "{path}");
    }
    let br = get(&ctx, "/openapi.json", Some("br")).await;
    assert_eq!(br.headers()["content-encoding"], "br");
}

#[tokio::test]
async fn event_streams_are_never_compressed() {
    let ctx = TestContext::new().await;
    let session = ctx.new_session_id(None).await;
    let events = get(
        &ctx,
        &format!("/api/messaging/sessions/{session}/events"),
        Some("gzip, br"),
    )
    .await;
    assert_eq!(events.status(), 200);
    assert!(events.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(events.headers().get("content-encoding").is_none());
    let sse = reqwest::Client::new()
        .post(ctx.url(&format!("/api/messaging/sessions/{session}/messages")))
        .header("accept-encoding", "gzip")
        .json(&serde_json::json!({"content": "hi", "transport": "sse"}))
        .send()
        .await
        .unwrap();
    assert!(sse.headers().get("content-encoding").is_none());
    let small = get(
        &ctx,
        &format!("/api/messaging/sessions/{session}"),
        Some("gzip"),
    )
    .await;
    assert!(small.headers().get("content-encoding").is_none());
}
