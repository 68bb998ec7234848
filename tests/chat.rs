//! The web chat page: `/chat` and its two assets are public (also on a server with keys), typed, under a strict
//! Content-Security-Policy, with no inline code and no URL of any other site; the docs link to it, `/` still
//! lands on the docs, and the DNS-rebinding guard covers the page as the rest.

use reqwest::header::HeaderMap;
use reqwest::redirect::Policy;

use crate::support::*;

const KEY: &str = "chat-page-test-key";

/// The page and its assets: path, content type.
const ASSETS: [(&str, &str); 3] = [
    ("/chat", "text/html; charset=utf-8"),
    ("/chat/app.js", "text/javascript; charset=utf-8"),
    ("/chat/app.css", "text/css; charset=utf-8"),
];

async fn get(ctx: &TestContext, path: &str) -> (u16, HeaderMap, String) {
    let client = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let resp = client.get(ctx.url(path)).send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

/// The policy's directives, by name.
fn directive<'a>(policy: &'a str, name: &str) -> Option<&'a str> {
    policy
        .split(';')
        .map(str::trim)
        .find_map(|d| d.strip_prefix(name).map(str::trim))
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_typed_under_a_strict_policy() {
    for ctx in [
        TestContext::new().await,
        TestContext::with_options(TestOptions::with_keys(&[KEY])).await,
    ] {
        for (path, content_type) in ASSETS {
            let (status, headers, body) = get(&ctx, path).await;
            assert_eq!(status, 200, "{path} is public");
            assert_eq!(headers["content-type"], content_type, "{path}");
            assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
            let policy = headers["content-security-policy"].to_str().unwrap();
            assert_eq!(directive(policy, "default-src"), Some("'none'"), "{path}");
            assert_eq!(directive(policy, "script-src"), Some("'self'"), "{path}");
            assert_eq!(directive(policy, "style-src"), Some("'self'"), "{path}");
            assert_eq!(directive(policy, "connect-src"), Some("'self'"), "{path}");
            assert_eq!(
                directive(policy, "frame-ancestors"),
                Some("'none'"),
                "{path}"
            );
            assert!(!policy.contains("unsafe"), "{path}: {policy}");
            for scheme in ["http://", "https://", "//cdn", "ws://", "wss://"] {
                assert!(
                    !body.to_lowercase().contains(scheme),
                    "{path} names no other site ({scheme})"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_page_has_no_inline_code_and_renders_text_as_text() {
    let ctx = TestContext::new().await;
    let (_, _, html) = get(&ctx, "/chat").await;
    assert!(html.contains("<script src=\"/chat/app.js\""), "{html}");
    assert!(html.contains("href=\"/chat/app.css\""), "{html}");
    assert_eq!(
        html.matches("<script").count(),
        1,
        "one script, from its file"
    );
    assert!(!html.contains("<style"), "no inline style sheet");
    assert!(!html.contains(" style="), "no inline styles");
    assert!(
        !html
            .split_whitespace()
            .any(|word| word.starts_with("on") && word.contains('=')),
        "no inline event handlers"
    );
    assert!(html.contains("name=\"viewport\""), "readable on a phone");
    assert!(
        html.contains("aria-live=\"polite\""),
        "new messages announced"
    );
    let (_, _, js) = get(&ctx, "/chat/app.js").await;
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "eval(",
        "document.write",
    ] {
        assert!(!js.contains(sink), "app.js never uses {sink}");
    }
    assert!(js.contains("textContent"));
}

#[tokio::test]
async fn the_docs_link_to_the_chat_and_the_root_still_redirects_to_the_docs() {
    let ctx = TestContext::new().await;
    let (status, headers, _) = get(&ctx, "/").await;
    assert_eq!(status, 307);
    assert_eq!(headers["location"], "/docs");
    let (status, _, docs) = get(&ctx, "/docs").await;
    assert_eq!(status, 200);
    assert!(
        docs.contains("](/chat)"),
        "the description Swagger UI renders links to the chat page"
    );
}

#[tokio::test]
async fn the_host_guard_covers_the_page() {
    let ctx = TestContext::new().await;
    let resp = reqwest::Client::new()
        .get(ctx.url("/chat"))
        .header("host", "rebound.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}
