//! Registering webhooks through the API: what a registration answers and lists, and every refusal: bad bodies
//! (400 naming the field), the egress policy's hosts (400), a session token (403), no key (401), unknown and
//! malformed ids (404).

use agent_sessions::types;
use agent_sessions_server::agents::EgressPolicy;
use agent_sessions_server::clock::Clock;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::access::{bearer, call, key_header, refs, KEY};
use crate::support::*;

fn with_key() -> TestOptions {
    TestOptions::with_keys(&[KEY])
}

/// Registers a webhook at `url` for `events` (empty: all), which must succeed.
async fn create(
    ctx: &TestContext,
    url: &str,
    events: &[types::WebhookEventType],
) -> types::CreatedWebhook {
    let body = types::CreateWebhookRequest {
        url: url.into(),
        events: events.to_vec(),
    };
    ok(
        "create_webhook",
        ctx.client.create_webhook().body(body).send(),
    )
    .await
}

#[tokio::test]
async fn a_registration_answers_its_secret_once_and_lists_without_it() {
    let ctx = TestContext::with_options(with_key()).await;
    let all = create(&ctx, "http://127.0.0.1:9/all", &[]).await;
    assert!(all.secret.starts_with("whsec_"), "{}", all.secret);
    assert_eq!(
        agent_sessions::webhooks::sign(&all.secret, "id", 1, b"{}").map(|s| s.starts_with("v1,")),
        Ok(true),
        "the secret is whsec_ and base64"
    );
    assert_eq!(all.url, "http://127.0.0.1:9/all");
    assert_eq!(all.created_at, ctx.clock.now());
    use types::WebhookEventType::*;
    assert_eq!(
        all.events,
        [
            SessionCreated,
            MessageCreated,
            MessageReply,
            SessionWarning,
            SessionExpired,
            SessionDeleted
        ],
        "every type by default"
    );
    ctx.clock.advance(chrono::Duration::seconds(1));
    let some = create(
        &ctx,
        "https://hooks.example.com/x",
        &[SessionDeleted, MessageReply, SessionDeleted],
    )
    .await;
    assert_eq!(some.events, [MessageReply, SessionDeleted]);
    assert_ne!(some.secret, all.secret);

    let listed = ok("list_webhooks", ctx.client.list_webhooks().send()).await;
    assert_eq!(listed.total, 2);
    let ids: Vec<Uuid> = listed.webhooks.iter().map(|w| w.id).collect();
    assert_eq!(ids, [all.id, some.id], "oldest first");
    assert_eq!(listed.webhooks[1].events, [MessageReply, SessionDeleted]);
    // Secrets are shown once: the raw list has no such field.
    let raw = call(
        &ctx,
        Method::GET,
        "/api/webhooks",
        &refs(&key_header(KEY)),
        None,
    )
    .await;
    assert_eq!(raw.status, 200);
    assert!(!raw.body.to_string().contains("whsec_"), "{}", raw.body);

    let deleted = ok(
        "delete_webhook",
        ctx.client
            .delete_webhook()
            .webhook_id(all.id.to_string())
            .send(),
    )
    .await;
    assert!(deleted.success);
    let listed = ok("list_webhooks", ctx.client.list_webhooks().send()).await;
    assert_eq!(listed.total, 1);
    assert_eq!(listed.webhooks[0].id, some.id);
}

/// Each bad body is a 400 whose `details.field` names what is wrong.
#[tokio::test]
async fn bad_registrations_are_400_naming_the_field() {
    let ctx = TestContext::with_options(with_key()).await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({}), "url", "Missing required field: url"),
        (json!({"url": null}), "url", "Missing required field: url"),
        (json!({"url": 7}), "url", "url must be an http or https URL"),
        (json!({"url": ""}), "url", "url must be an http or https URL"),
        (json!({"url": "ftp://127.0.0.1/x"}), "url", "url must be an http or https URL"),
        (json!({"url": "not a url"}), "url", "url must be an http or https URL"),
        (json!({"url": "http://"}), "url", "url must be an http or https URL"),
        (json!({"url": "mailto:ops@example.com"}), "url", "url must be an http or https URL"),
        (
            json!({"url": "http://169.254.169.254/latest"}),
            "url",
            "url host '169.254.169.254' is not allowed: it is a cloud metadata address",
        ),
        (
            json!({"url": "http://[fe80::1]/hook"}),
            "url",
            "url host 'fe80::1' is not allowed: it is a link-local address",
        ),
        (
            json!({"url": "http://127.0.0.1/x", "events": "message.reply"}),
            "events",
            "events must be an array of event types",
        ),
        (
            json!({"url": "http://127.0.0.1/x", "events": []}),
            "events",
            "events must name at least one event type",
        ),
        (
            json!({"url": "http://127.0.0.1/x", "events": ["session.renewed"]}),
            "events",
            "events: 'session.renewed' is not an event type (expected one of: session.created, message.created, \
             message.reply, session.warning, session.expired, session.deleted)",
        ),
        (
            json!({"url": "http://127.0.0.1/x", "events": [1]}),
            "events",
            "events: a value that is not a string is not an event type",
        ),
        (
            json!({"url": "http://127.0.0.1/x", "events": null}),
            "events",
            "events must be an array of event types",
        ),
    ];
    for (body, field, message) in cases {
        let answer = call(
            &ctx,
            Method::POST,
            "/api/webhooks",
            &refs(&key_header(KEY)),
            Some(&body),
        )
        .await;
        let what = format!("{body}");
        answer.assert_error(400, "VALIDATION_ERROR", &what);
        assert_eq!(answer.body["error"]["details"]["field"], field, "{what}");
        let got = answer.body["error"]["message"].as_str().unwrap_or_default();
        assert!(got.starts_with(message), "{what}: {got}");
    }
    // Not an object at all.
    let answer = call(
        &ctx,
        Method::POST,
        "/api/webhooks",
        &refs(&key_header(KEY)),
        Some(&json!(["http://127.0.0.1/x"])),
    )
    .await;
    answer.assert_error(400, "VALIDATION_ERROR", "an array body");
    let listed = ok("list_webhooks", ctx.client.list_webhooks().send()).await;
    assert_eq!(listed.total, 0, "nothing was registered");
}

/// The operator's host allowlist of agent backends applies to webhooks too.
#[tokio::test]
async fn the_egress_allowlist_refuses_unlisted_hosts() {
    let ctx = TestContext::with_options(TestOptions {
        egress: EgressPolicy {
            allowed_hosts: Some(vec!["hooks.example.com".parse().unwrap()]),
            ..EgressPolicy::default()
        },
        ..with_key()
    })
    .await;
    let register = |url: &str| {
        let url = url.to_string();
        let ctx = &ctx;
        async move {
            ctx.client
                .create_webhook()
                .body(types::CreateWebhookRequest {
                    url,
                    events: Vec::new(),
                })
                .send()
                .await
        }
    };
    let message = assert_api_error(
        register("http://127.0.0.1:9/hook").await,
        400,
        types::ErrorCode::ValidationError,
    );
    assert_eq!(
        message,
        "url host '127.0.0.1' is not allowed: it is not listed in --agent-allowed-hosts (AGENT_ALLOWED_HOSTS)"
    );
    register("https://hooks.example.com/agent-sessions")
        .await
        .expect("a listed host is accepted");
}

#[tokio::test]
async fn only_an_api_key_may_manage_webhooks() {
    let ctx = TestContext::with_options(with_key()).await;
    let session = ctx.create_session(None).await;
    let token = session.session_token.expect("a session token");
    let created = create(&ctx, "http://127.0.0.1:9/x", &[]).await;
    let body = json!({"url": "http://127.0.0.1:9/y"});
    let by_id = format!("/api/webhooks/{}", created.id);
    for (method, path, body) in [
        (Method::POST, "/api/webhooks", Some(&body)),
        (Method::GET, "/api/webhooks", None),
        (Method::DELETE, by_id.as_str(), None),
    ] {
        let what = format!("{method} {path}");
        let answer = call(&ctx, method.clone(), path, &refs(&bearer(&token)), body).await;
        answer.assert_error(403, "FORBIDDEN", &format!("{what} with a session token"));
        let answer = call(&ctx, method.clone(), path, &[], body).await;
        answer.assert_error(401, "UNAUTHORIZED", &format!("{what} without credentials"));
    }
    // A session token's client builds its requests with the SDK too.
    let as_user = agent_sessions::Client::with_session_token(&ctx.base_url, &token).unwrap();
    assert_api_error(
        as_user.list_webhooks().send().await,
        403,
        types::ErrorCode::Forbidden,
    );
    let listed = ok("list_webhooks", ctx.client.list_webhooks().send()).await;
    assert_eq!(listed.total, 1, "refused requests changed nothing");
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_404() {
    let ctx = TestContext::with_options(with_key()).await;
    let unknown = Uuid::new_v4().to_string();
    for id in [unknown.as_str(), "not-a-uuid", "%FF%FE"] {
        let answer = call(
            &ctx,
            Method::DELETE,
            &format!("/api/webhooks/{id}"),
            &refs(&key_header(KEY)),
            None,
        )
        .await;
        answer.assert_error(404, "WEBHOOK_NOT_FOUND", id);
    }
    let message = assert_api_error(
        ctx.client
            .delete_webhook()
            .webhook_id(&unknown)
            .send()
            .await,
        404,
        types::ErrorCode::WebhookNotFound,
    );
    assert_eq!(message, format!("Webhook '{unknown}' not found"));
    // A second delete of the same webhook finds nothing.
    let created = create(&ctx, "http://127.0.0.1:9/x", &[]).await;
    let id = created.id.to_string();
    ok(
        "delete_webhook",
        ctx.client.delete_webhook().webhook_id(&id).send(),
    )
    .await;
    assert_api_error(
        ctx.client.delete_webhook().webhook_id(&id).send().await,
        404,
        types::ErrorCode::WebhookNotFound,
    );
    // Other methods on the paths are 405 with the contract's methods.
    let answer = call(
        &ctx,
        Method::PUT,
        "/api/webhooks",
        &refs(&key_header(KEY)),
        None,
    )
    .await;
    answer.assert_error(405, "METHOD_NOT_ALLOWED", "PUT /api/webhooks");
    assert_eq!(answer.header("allow"), Some("GET, POST"));
}
