//! `/metrics`: counters that move with the work done (compared before and after: every server in this test
//! binary shares the process's recorder), who may read it, and its own listener.

use reqwest::Method;
use serde_json::json;

use crate::access::call;
use crate::support::{TestContext, TestOptions};

/// The value of the series `name{labels}` (labels as rendered, e.g. `transport="http"`), 0 when absent.
fn value(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            series == &name
                || (series.starts_with(&format!("{name}{{"))
                    && labels.iter().all(|l| series.contains(l)))
        })
        .filter(|(series, _)| labels.is_empty() || series.contains('{'))
        .map(|(_, v)| v.parse::<f64>().expect("a number"))
        .sum()
}

async fn scrape(ctx: &TestContext, headers: &[(&str, &str)]) -> String {
    let mut req = reqwest::Client::new().get(ctx.url("/metrics"));
    for (name, v) in headers {
        req = req.header(*name, *v);
    }
    let resp = req.send().await.expect("scraped");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    resp.text().await.expect("text")
}

#[tokio::test]
async fn counters_move_with_creates_sends_and_requests() {
    let ctx = TestContext::new().await;
    let before = scrape(&ctx, &[]).await;
    let session = ctx.new_session_id(None).await;
    ctx.create_session(None).await;
    let sent = call(
        &ctx,
        Method::POST,
        &format!("/api/messaging/sessions/{session}/messages"),
        &[],
        Some(&json!({"content": "hi", "transport": "http"})),
    )
    .await;
    assert_eq!(sent.status, 201, "{}", sent.body);
    let missing = call(
        &ctx,
        Method::GET,
        "/api/messaging/sessions/7c9e6679-7425-40de-944b-e07fc1f90ae7",
        &[],
        None,
    )
    .await;
    assert_eq!(missing.status, 404);
    let after = scrape(&ctx, &[]).await;
    let delta =
        |name: &str, labels: &[&str]| value(&after, name, labels) - value(&before, name, labels);
    assert!(
        delta("agent_sessions_sessions_created_total", &[]) >= 2.0,
        "{after}"
    );
    assert!(delta("agent_sessions_messages_total", &["transport=\"http\""]) >= 1.0);
    assert!(
        delta(
            "agent_sessions_http_requests_total",
            &["operation=\"createSession\"", "status=\"201\""]
        ) >= 2.0
    );
    assert!(
        delta(
            "agent_sessions_http_requests_total",
            &["operation=\"getSession\"", "status=\"404\""]
        ) >= 1.0
    );
    assert!(
        delta(
            "agent_sessions_agent_reply_duration_seconds_count",
            &["backend=\"echo\"", "outcome=\"ok\""]
        ) >= 1.0
    );
    assert!(
        delta(
            "agent_sessions_http_request_duration_seconds_count",
            &["operation=\"sendMessage\""]
        ) >= 1.0
    );
    assert!(
        delta(
            "agent_sessions_store_commit_batch_size_count",
            &["backend=\"sqlite\""]
        ) >= 1.0
    );
    // No raw path, hence no id, is ever a label.
    assert!(!after.contains(&session), "a session id in the metrics");
    assert!(after.contains("agent_sessions_active_sessions"));
}

#[tokio::test]
async fn with_keys_metrics_need_an_api_key() {
    let ctx = TestContext::with_options(TestOptions::with_keys(&["metrics-key"])).await;
    let anonymous = call(&ctx, Method::GET, "/metrics", &[], None).await;
    anonymous.assert_error(401, "UNAUTHORIZED", "no credentials");
    let session = ctx.create_session(None).await;
    let token = format!("Bearer {}", session.session_token.expect("a token"));
    let token_only = call(
        &ctx,
        Method::GET,
        "/metrics",
        &[("authorization", &token)],
        None,
    )
    .await;
    token_only.assert_error(403, "FORBIDDEN", "a session token");
    let text = scrape(&ctx, &[("x-api-key", "metrics-key")]).await;
    assert!(text.contains("agent_sessions_http_requests_total"));
}

#[tokio::test]
async fn a_listener_of_its_own_serves_metrics_and_the_api_port_does_not() {
    let ctx = TestContext::with_options(TestOptions {
        metrics: false,
        ..TestOptions::default()
    })
    .await;
    let on_api = call(&ctx, Method::GET, "/metrics", &[], None).await;
    on_api.assert_error(404, "NOT_FOUND", "metrics elsewhere");
    let listener = agent_sessions_server::serve::bind("127.0.0.1", 0)
        .await
        .expect("bind");
    let at = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(agent_sessions_server::serve(
        listener,
        agent_sessions_server::api::probes::metrics_app(),
        async move {
            let _ = stopped.await;
        },
    ));
    ctx.create_session(None).await;
    let resp = reqwest::get(format!("http://{at}/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let text = resp.text().await.unwrap();
    assert!(value(&text, "agent_sessions_sessions_created_total", &[]) >= 1.0);
    let other = reqwest::get(format!("http://{at}/api/agents"))
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
