//! The authorization matrix: every operation of `openapi.yaml` (read from the contract, so that a new route
//! cannot be forgotten) against every kind of credential, each cell asserting the status and `error.code`.
//! What an operation admits comes from its `security` in the contract: public (none), an API key only
//! (`apiKey`), or also its own session's token (`sessionToken`), on the event feeds (SSE and WebSocket) also as
//! `?access_token=`.

use std::collections::BTreeSet;

use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use super::*;
use crate::support::*;
use agent_sessions_server::auth::{AccessSettings, RateLimitSettings};

/// One operation of the contract.
#[derive(Debug, Clone)]
struct Operation {
    id: String,
    method: Method,
    path: String,
    /// Scheme names its `security` lists; empty: public.
    schemes: BTreeSet<String>,
    has_body: bool,
}

impl Operation {
    fn public(&self) -> bool {
        self.schemes.is_empty()
    }

    fn takes_session_tokens(&self) -> bool {
        self.schemes.contains("sessionToken")
    }

    fn takes_query_tokens(&self) -> bool {
        self.schemes.contains("accessToken")
    }
}

fn operations() -> Vec<Operation> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
        .expect("openapi.yaml");
    let spec: Value = serde_yaml::from_str(&text).expect("openapi.yaml parses");
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            if !op.is_object() || op.get("operationId").is_none() {
                continue;
            }
            let schemes = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|alt| {
                    alt.as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, _)| k.clone())
                })
                .collect();
            out.push(Operation {
                id: op["operationId"].as_str().expect("operationId").to_string(),
                method,
                path: path.clone(),
                schemes,
                has_body: op.get("requestBody").is_some(),
            });
        }
    }
    out
}

/// A valid body for each operation that takes one. A new operation with a body must be added here.
fn body_for(op: &Operation, agent_id: Uuid) -> Option<Value> {
    if !op.has_body {
        return None;
    }
    Some(match op.id.as_str() {
        "createSession" => json!({"agentId": agent_id, "userId": Uuid::new_v4()}),
        "createAgent" => json!({"name": "matrix"}),
        "sendMessage" => json!({"content": "hello"}),
        "updateSessionTimeout" => json!({"timeoutMinutes": 60}),
        // Nothing listens there, and warnings come only from the sweeper, which does not run here.
        "createWebhook" => json!({"url": "http://127.0.0.1:9/matrix", "events": ["session.warning"]}),
        other => panic!(
            "the authorization matrix has no request body for operation '{other}': add one to body_for"
        ),
    })
}

/// Fresh resources for one cell: a session of "this" client with its token, another session with its token,
/// an agent and a webhook, all created with the key.
struct Fixture {
    session: Uuid,
    token: String,
    other_token: String,
    agent: Uuid,
    webhook: Uuid,
}

async fn create_session(ctx: &TestContext, timeout: Value) -> (Uuid, String) {
    let answer = call(
        ctx,
        Method::POST,
        "/api/messaging/sessions",
        &refs(&key_header(KEY)),
        Some(&json!({"agentId": ctx.agent_id, "userId": Uuid::new_v4(), "timeoutConfig": timeout})),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    let id = answer.body["sessionId"].as_str().unwrap().parse().unwrap();
    let token = answer.body["sessionToken"]
        .as_str()
        .expect("createSession returns a sessionToken")
        .to_string();
    (id, token)
}

async fn fixture(ctx: &TestContext) -> Fixture {
    let (session, token) = create_session(ctx, json!({})).await;
    let (_, other_token) = create_session(ctx, json!({})).await;
    let agent = call(
        ctx,
        Method::POST,
        "/api/agents",
        &refs(&key_header(KEY)),
        Some(&json!({"name": "target"})),
    )
    .await;
    assert_eq!(agent.status, 201, "{}", agent.body);
    let webhook = call(
        ctx,
        Method::POST,
        "/api/webhooks",
        &refs(&key_header(KEY)),
        Some(&json!({"url": "http://127.0.0.1:9/matrix", "events": ["session.warning"]})),
    )
    .await;
    assert_eq!(webhook.status, 201, "{}", webhook.body);
    Fixture {
        session,
        token,
        other_token,
        agent: agent.body["id"].as_str().unwrap().parse().unwrap(),
        webhook: webhook.body["id"].as_str().unwrap().parse().unwrap(),
    }
}

fn path_for(op: &Operation, f: &Fixture, session: Uuid) -> String {
    op.path
        .replace("{sessionId}", &session.to_string())
        .replace("{agentId}", &f.agent.to_string())
        .replace("{webhookId}", &f.webhook.to_string())
}

/// `token` with its payload replaced by `payload_of`'s, keeping `token`'s signature: a forgery.
fn forged(token: &str, payload_of: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let payload: Vec<&str> = payload_of.split('.').collect();
    format!("{}.{}.{}", parts[0], payload[1], parts[2])
}

/// One cell: the credentials, whether the request names this client's session or another one (which may not
/// exist), and what must come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Any 2xx: admitted, and the operation did its job.
    Success,
    Error(u16, &'static str),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_admits_exactly_the_credentials_its_contract_lists() {
    let ctx = TestContext::with_options(TestOptions {
        access: AccessSettings {
            api_keys: vec![KEY.into(), OTHER_KEY.into()],
            // The matrix makes hundreds of requests from one address; limits have their own tests.
            limits: RateLimitSettings {
                key_per_minute: 0,
                session_per_minute: 0,
                anonymous_per_minute: 0,
            },
            ..AccessSettings::default()
        },
        ..TestOptions::default()
    })
    .await;
    let ops = operations();
    assert!(
        ops.len() >= 15,
        "the contract lists its operations: {ops:?}"
    );

    // A token that expired: its session's hard end (5 minutes) passed.
    let (_, expired) =
        create_session(&ctx, json!({"timeoutMinutes": 5, "maxDurationMinutes": 5})).await;
    ctx.advance_minutes(6);

    let mut checked = 0;
    for op in &ops {
        // (label, headers, query token, target another session that does not exist, expectation)
        let unauthorized = Expect::Error(401, "UNAUTHORIZED");
        let forbidden = Expect::Error(403, "FORBIDDEN");
        let admitted_if = |yes: bool, otherwise: Expect| {
            if op.public() || yes {
                Expect::Success
            } else {
                otherwise
            }
        };
        let cells: Vec<(&str, Expect)> = vec![
            ("no credentials", admitted_if(false, unauthorized)),
            ("a wrong X-API-KEY", admitted_if(false, unauthorized)),
            ("a wrong bearer token", admitted_if(false, unauthorized)),
            ("the key as X-API-KEY", Expect::Success),
            ("the key as Bearer", Expect::Success),
            ("the second key", Expect::Success),
            (
                "this session's token",
                admitted_if(op.takes_session_tokens(), forbidden),
            ),
            ("another session's token", admitted_if(false, forbidden)),
            (
                "a token of a session that does not exist",
                admitted_if(false, forbidden),
            ),
            ("an expired token", admitted_if(false, unauthorized)),
            (
                "a token with a forged payload",
                admitted_if(false, unauthorized),
            ),
            (
                "this session's token as ?access_token=",
                admitted_if(op.takes_query_tokens(), unauthorized),
            ),
        ];
        for (label, expect) in cells {
            let f = fixture(&ctx).await;
            let mut session = f.session;
            let headers: Vec<(&str, String)> = match label {
                "no credentials" | "this session's token as ?access_token=" => vec![],
                "a wrong X-API-KEY" => vec![("x-api-key", "not-a-key".into())],
                "a wrong bearer token" => vec![("authorization", "Bearer not-a-token".into())],
                "the key as X-API-KEY" => vec![("x-api-key", KEY.into())],
                "the key as Bearer" => vec![("authorization", format!("Bearer {KEY}"))],
                "the second key" => vec![("x-api-key", OTHER_KEY.into())],
                "this session's token" => vec![("authorization", format!("Bearer {}", f.token))],
                "another session's token" => {
                    vec![("authorization", format!("Bearer {}", f.other_token))]
                }
                "a token of a session that does not exist" => {
                    session = Uuid::new_v4();
                    vec![("authorization", format!("Bearer {}", f.other_token))]
                }
                "an expired token" => vec![("authorization", format!("Bearer {expired}"))],
                "a token with a forged payload" => {
                    // The other session's signature over this session's claims.
                    vec![(
                        "authorization",
                        format!("Bearer {}", forged(&f.other_token, &f.token)),
                    )]
                }
                _ => unreachable!(),
            };
            let mut path = path_for(op, &f, session);
            if label == "this session's token as ?access_token=" {
                path = format!("{path}?access_token={}", f.token);
            }
            let borrowed: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let body = body_for(op, ctx.agent_id);
            let answer = call(&ctx, op.method.clone(), &path, &borrowed, body.as_ref()).await;
            let what = format!("{} {} ({}) with {label}", op.method, op.path, op.id);
            match expect {
                Expect::Success => assert!(
                    (200..300).contains(&answer.status)
                        || (answer.status == 101 && op.path.ends_with("/ws")),
                    "{what}: expected success, got {} {}",
                    answer.status,
                    answer.body
                ),
                Expect::Error(status, code) => {
                    answer.assert_error(status, code, &what);
                    if status == 401 {
                        let challenge = answer.header("www-authenticate").unwrap_or_default();
                        assert!(
                            challenge.starts_with("Bearer"),
                            "{what}: WWW-Authenticate {challenge:?}"
                        );
                    }
                    // Credentials never come back in an error.
                    let text = answer.body.to_string();
                    assert!(
                        !text.contains(KEY) && !text.contains(&f.token),
                        "{what}: {text}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, ops.len() * 12);
    // The forged token's payload really names this session: the signature alone refused it.
    let f = fixture(&ctx).await;
    let claims = forged(&f.other_token, &f.token);
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.split('.').nth(1).unwrap())
        .unwrap();
    let payload: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(payload["sid"], f.session.to_string());
}

/// Refused requests change nothing and read nothing: a 401 or 403 comes before the body is parsed (a malformed
/// body still gets 401) and before the store is touched (a session token gets the same 403 for an existing and
/// a missing session).
#[tokio::test]
async fn refusals_come_before_the_body_and_the_store() {
    let ctx = TestContext::with_options(TestOptions::with_keys(&[KEY])).await;
    let before = ctx.stored_sessions().await;
    let answer = raw_with(
        &ctx,
        Method::POST,
        "/api/messaging/sessions",
        &[],
        "{not json",
    )
    .await;
    answer.assert_error(401, "UNAUTHORIZED", "malformed body, no key");
    let answer = raw_with(
        &ctx,
        Method::POST,
        "/api/messaging/sessions",
        &[("x-api-key", "wrong")],
        "{\"agentId\": 1}",
    )
    .await;
    answer.assert_error(401, "UNAUTHORIZED", "wrong key");
    let after = ctx.stored_sessions().await;
    assert_eq!(before, after, "nothing was created");

    let (session, token) = create_session(&ctx, json!({})).await;
    let _ = session;
    let (other, _) = create_session(&ctx, json!({})).await;
    ctx.delete(other).await;
    for target in [other, Uuid::new_v4()] {
        let path = format!("/api/messaging/sessions/{target}");
        let answer = get_with(&ctx, &path, &refs(&bearer(&token))).await;
        answer.assert_error(403, "FORBIDDEN", "another session, gone or never there");
        assert_eq!(
            answer.body["error"]["message"],
            "This session token is for another session"
        );
    }
}

async fn raw_with(
    ctx: &TestContext,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = reqwest::Client::new()
        .request(method, ctx.url(path))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req.send().await.unwrap();
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.json().await.unwrap_or(Value::Null),
    }
}
