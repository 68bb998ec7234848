//! What agent backends may reach and use, through the real server: https verified with the operator's CA file,
//! secrets only by allowed name (and never sent for a refused one), refused hosts and addresses, at creation and
//! again for stored agents at reply time.

use agent_sessions::types;
use agent_sessions_server::agents::egress::read_ca_file;
use agent_sessions_server::agents::{EgressPolicy, HostPattern};
use agent_sessions_server::domain::{Agent, AgentBackend, OpenAiBackend, TimeoutConfigPatch};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::fake_backend::*;
use crate::support::*;

async fn context(egress: EgressPolicy) -> TestContext {
    TestContext::with_options(TestOptions {
        egress,
        ..TestOptions::default()
    })
    .await
}

fn openai(base_url: String, api_key_env: Option<&str>) -> types::AgentBackend {
    types::AgentBackend {
        type_: types::AgentBackendType::Openai,
        url: None,
        base_url: Some(base_url),
        model: Some("test-model".into()),
        api_key_env: api_key_env.map(str::to_string),
        system_prompt: None,
    }
}

/// Creates an agent from a raw JSON backend, for the bodies the typed SDK would refuse to build or that must fail.
async fn post_agent(ctx: &TestContext, backend: Value) -> (u16, String, Value) {
    raw(
        reqwest::Method::POST,
        &ctx.url("/api/agents"),
        Some("application/json"),
        json!({"name": "egress", "backend": backend}).to_string(),
    )
    .await
}

/// A session of an agent stored as an older server (or an older configuration) would have, past today's
/// validation.
async fn session_of_stored(ctx: &TestContext, backend: AgentBackend) -> String {
    let agent = Agent {
        id: Uuid::new_v4(),
        name: "stored before the rules".into(),
        backend,
        session_defaults: TimeoutConfigPatch::default(),
        created_at: ctx.service.now(),
    };
    ctx.store.insert_agent(&agent).await.expect("agent stored");
    ctx.session_with(agent.id).await.session_id.to_string()
}

/// Sends `content` with the `http` transport: the agent's reply text, or the status, code and message.
async fn ask(
    ctx: &TestContext,
    session: &str,
    content: &str,
) -> Result<String, (u16, types::ErrorCode, String)> {
    match ctx.try_send(session, content).await {
        Ok(response) => Ok(response
            .into_inner()
            .agent_response
            .expect("an agent response")
            .text),
        Err(e) => Err(api_error::<types::MessageResponse>(Err(e))),
    }
}

fn agent_error(result: Result<String, (u16, types::ErrorCode, String)>) -> String {
    match result {
        Err((502, types::ErrorCode::AgentError, message)) => message,
        other => panic!("expected 502 AGENT_ERROR, got {other:?}"),
    }
}

/// A listener that must never see a connection. `assert_untouched` asks the kernel, without waiting, for a
/// connection in its accept queue, which holds every connection completed so far.
struct Untouched(std::net::TcpListener);

impl Untouched {
    fn bind() -> (Self, String) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        (Self(listener), base)
    }

    fn assert_untouched(&self) {
        match self.0.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok(_) => panic!("the backend connected although the policy refuses the agent"),
            Err(e) => panic!("accept failed: {e}"),
        }
    }
}

#[tokio::test]
async fn https_webhook_answers_when_the_ca_file_holds_its_ca() {
    let ca = TestCa::new("agent-sessions egress test CA");
    let unrelated = TestCa::new("unrelated CA");
    let dir = tempfile::tempdir().expect("temp dir");
    // A bundle of two: the file may hold several roots, and all count.
    let ca_file = ca.write_ca_file(dir.path(), &[&unrelated]);
    let extra_roots = read_ca_file(&ca_file).expect("CA file reads");
    assert_eq!(extra_roots.len(), 2);
    let ctx = context(EgressPolicy {
        extra_roots,
        ..EgressPolicy::default()
    })
    .await;

    let tls = ca.server_config(&["localhost", "127.0.0.1"]);
    let (port, server) = serve_once_tls(tls, |captured, mut stream| async move {
        respond_whole(
            &mut stream,
            "200 OK",
            "application/json",
            r#"{"text":"over TLS"}"#,
        )
        .await;
        captured
    })
    .await;
    let session = ctx
        .session_of(types::AgentBackendInput::webhook(format!(
            "https://localhost:{port}/hook"
        )))
        .await;
    assert_eq!(
        ask(&ctx, &session, "hello").await,
        Ok("over TLS".to_string())
    );
    let captured = joined(server).await.expect("TLS handshake succeeded");
    assert_eq!(captured.path, "/hook");
    assert_eq!(captured.body["message"]["content"], "hello");
}

#[tokio::test]
async fn https_webhook_without_the_ca_fails_naming_the_certificate_problem() {
    let ca = TestCa::new("agent-sessions untrusted test CA");
    let ctx = context(EgressPolicy::default()).await;
    let (port, server) = serve_once_tls(ca.server_config(&["localhost"]), |_c, _s| async {}).await;
    let session = ctx
        .session_of(types::AgentBackendInput::webhook(format!(
            "https://localhost:{port}/hook"
        )))
        .await;
    let message = agent_error(ask(&ctx, &session, "hello").await);
    assert!(
        message.contains("webhook could not connect: invalid peer certificate: UnknownIssuer"),
        "{message}"
    );
    assert!(
        joined(server).await.is_err(),
        "the handshake failed: no request was sent"
    );
}

#[tokio::test]
async fn https_openai_agent_streams_through_the_ca_file_with_its_key() {
    let ca = TestCa::new("agent-sessions openai test CA");
    let dir = tempfile::tempdir().expect("temp dir");
    let extra_roots = read_ca_file(&ca.write_ca_file(dir.path(), &[])).expect("CA file reads");
    let key_var = format!("AGENT_SECRET_TEST_EGRESS_TLS_{}", Uuid::new_v4().simple());
    std::env::set_var(&key_var, "sk-egress-over-tls");
    let ctx = context(EgressPolicy {
        extra_roots,
        ..EgressPolicy::default()
    })
    .await;
    let (port, server) = serve_once_tls(
        ca.server_config(&["127.0.0.1"]),
        |captured, mut stream| async move {
            start_stream(&mut stream, "text/event-stream").await;
            for piece in ["secure ", "reply"] {
                let frame = format!(
                    "data: {}\n\n",
                    json!({"choices": [{"delta": {"content": piece}}]})
                );
                write_piece(&mut stream, frame.as_bytes()).await;
            }
            write_piece(&mut stream, b"data: [DONE]\n\n").await;
            end_stream(&mut stream).await;
            captured
        },
    )
    .await;
    let base = format!("https://127.0.0.1:{port}/v1");
    let session = ctx.session_of(openai(base, Some(&key_var))).await;
    assert_eq!(
        ask(&ctx, &session, "hi").await,
        Ok("secure reply".to_string())
    );
    let captured = joined(server).await.expect("TLS handshake succeeded");
    assert_eq!(captured.path, "/v1/chat/completions");
    assert_eq!(
        captured.header("authorization"),
        Some("Bearer sk-egress-over-tls")
    );
}

#[tokio::test]
async fn an_agent_naming_a_variable_outside_the_rule_is_refused_at_creation() {
    let ctx = context(EgressPolicy::default()).await;
    let response = post_agent(
        &ctx,
        json!({"type": "openai", "baseUrl": "http://127.0.0.1:9/v1", "model": "m", "apiKeyEnv": "DATABASE_URL"}),
    )
    .await;
    assert_error(&response, 400, "VALIDATION_ERROR");
    let body = &response.2;
    assert_eq!(
        body["error"]["message"],
        "backend.apiKeyEnv 'DATABASE_URL' is not allowed: name a variable starting with AGENT_SECRET_, or list it \
         in --agent-secret-env (AGENT_SECRET_ENV)"
    );
    assert_eq!(body["error"]["details"]["field"], "backend.apiKeyEnv");
    assert_eq!(ctx.agents().await.total, 1, "only the demo agent");
}

#[tokio::test]
async fn a_stored_agent_naming_a_refused_variable_fails_without_connecting() {
    let ctx = context(EgressPolicy::default()).await;
    let (backend, base) = Untouched::bind();
    let session = session_of_stored(
        &ctx,
        AgentBackend::OpenAi(OpenAiBackend {
            base_url: format!("{base}/v1"),
            model: "m".into(),
            api_key_env: Some("DATABASE_URL".into()),
            system_prompt: None,
        }),
    )
    .await;
    for attempt in ["first", "second"] {
        let message = agent_error(ask(&ctx, &session, attempt).await);
        assert!(
            message.contains("backend.apiKeyEnv 'DATABASE_URL' is not allowed"),
            "{message}"
        );
        backend.assert_untouched();
    }
}

/// An OpenAI-compatible fake answering one whole completion, and the request it got.
async fn completion_server() -> (String, tokio::task::JoinHandle<Captured>) {
    serve_once(|captured, mut stream| async move {
        respond_whole(
            &mut stream,
            "200 OK",
            "application/json",
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"keyed"}}]}"#,
        )
        .await;
        captured
    })
    .await
}

#[tokio::test]
async fn a_variable_under_the_prefix_is_sent_as_the_bearer_key() {
    let key_var = format!("AGENT_SECRET_TEST_EGRESS_{}", Uuid::new_v4().simple());
    std::env::set_var(&key_var, "sk-egress-prefixed");
    let ctx = context(EgressPolicy::default()).await;
    let (base, server) = completion_server().await;
    let session = ctx
        .session_of(openai(format!("{base}/v1"), Some(&key_var)))
        .await;
    assert_eq!(ask(&ctx, &session, "hi").await, Ok("keyed".to_string()));
    let captured = joined(server).await;
    assert_eq!(
        captured.header("authorization"),
        Some("Bearer sk-egress-prefixed")
    );
}

#[tokio::test]
async fn a_variable_the_operator_listed_is_allowed_and_sent() {
    let listed = format!("EGRESS_TEST_LISTED_KEY_{}", Uuid::new_v4().simple());
    std::env::set_var(&listed, "sk-egress-listed");
    let unlisted = context(EgressPolicy::default()).await;
    let refused = post_agent(
        &unlisted,
        json!({"type": "openai", "baseUrl": "http://127.0.0.1:9/v1", "model": "m", "apiKeyEnv": listed}),
    )
    .await;
    assert_error(&refused, 400, "VALIDATION_ERROR");

    let ctx = context(EgressPolicy {
        secret_env: vec![listed.clone()],
        ..EgressPolicy::default()
    })
    .await;
    let (base, server) = completion_server().await;
    let session = ctx
        .session_of(openai(format!("{base}/v1"), Some(&listed)))
        .await;
    assert_eq!(ask(&ctx, &session, "hi").await, Ok("keyed".to_string()));
    assert_eq!(
        joined(server).await.header("authorization"),
        Some("Bearer sk-egress-listed")
    );
}

#[tokio::test]
async fn link_local_and_metadata_backends_are_refused_at_creation() {
    let ctx = context(EgressPolicy::default()).await;
    for (backend, field, host) in [
        (
            json!({"type": "webhook", "url": "http://169.254.169.254/latest/meta-data/"}),
            "backend.url",
            "169.254.169.254",
        ),
        (
            json!({"type": "webhook", "url": "http://[fe80::1]/"}),
            "backend.url",
            "fe80::1",
        ),
        (
            json!({"type": "webhook", "url": "http://[fd00:ec2::254]/latest/"}),
            "backend.url",
            "fd00:ec2::254",
        ),
        (
            json!({"type": "openai", "baseUrl": "http://169.254.169.254/v1", "model": "m"}),
            "backend.baseUrl",
            "169.254.169.254",
        ),
    ] {
        let response = post_agent(&ctx, backend.clone()).await;
        assert_error(&response, 400, "VALIDATION_ERROR");
        let error = &response.2["error"];
        assert_eq!(error["details"]["field"], field, "{backend}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{field} host '{host}' is not allowed: it is a "))
                && message.ends_with("refused unless the host is listed in --agent-allowed-hosts (AGENT_ALLOWED_HOSTS)"),
            "{message}"
        );
    }
    assert_eq!(ctx.agents().await.total, 1);
}

#[tokio::test]
async fn listing_a_link_local_host_lets_the_operator_opt_in() {
    let listed = ["169.254.169.254", "[fe80::1]", "fd00:ec2::254"];
    let ctx = context(EgressPolicy {
        allowed_hosts: Some(
            listed
                .iter()
                .map(|h| h.parse::<HostPattern>().unwrap())
                .collect(),
        ),
        ..EgressPolicy::default()
    })
    .await;
    // Created only: no message is sent, so nothing ever connects to these addresses.
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://[fd00:ec2::254]/latest/",
    ] {
        let response = post_agent(&ctx, json!({"type": "webhook", "url": url})).await;
        assert_eq!(response.0, 201, "{url}: {}", response.2);
    }
}

#[tokio::test]
async fn with_an_allowlist_only_listed_hosts_may_be_backends() {
    let ctx = context(EgressPolicy {
        allowed_hosts: Some(vec![
            "*.example.com".parse().unwrap(),
            "localhost".parse().unwrap(),
        ]),
        ..EgressPolicy::default()
    })
    .await;
    for url in [
        "https://a.example.com/hook",
        "https://b.a.example.com/hook",
        "http://localhost:11434/v1",
    ] {
        let response = post_agent(&ctx, json!({"type": "webhook", "url": url})).await;
        assert_eq!(response.0, 201, "{url}: {}", response.2);
    }
    for url in [
        "https://example.com/hook",
        "https://evil.test/hook",
        "http://127.0.0.1:11434/v1",
    ] {
        let response = post_agent(&ctx, json!({"type": "webhook", "url": url})).await;
        assert_error(&response, 400, "VALIDATION_ERROR");
        assert_eq!(response.2["error"]["details"]["field"], "backend.url");
        let message = response.2["error"]["message"].as_str().unwrap();
        assert!(
            message.ends_with(
                "is not allowed: it is not listed in --agent-allowed-hosts (AGENT_ALLOWED_HOSTS)"
            ),
            "{url}: {message}"
        );
    }
}

#[tokio::test]
async fn a_stored_agent_outside_a_later_allowlist_fails_without_connecting() {
    // The agent was created when any host was allowed; the operator has since listed only localhost.
    let ctx = context(EgressPolicy {
        allowed_hosts: Some(vec!["localhost".parse().unwrap()]),
        ..EgressPolicy::default()
    })
    .await;
    let (backend, base) = Untouched::bind();
    let session = session_of_stored(
        &ctx,
        AgentBackend::Webhook {
            url: format!("{base}/hook"),
        },
    )
    .await;
    let message = agent_error(ask(&ctx, &session, "hello").await);
    assert!(
        message
            .contains("host '127.0.0.1' is not allowed: it is not listed in --agent-allowed-hosts"),
        "{message}"
    );
    backend.assert_untouched();
}

#[tokio::test]
async fn a_listed_host_name_resolves_and_answers() {
    // `localhost` goes through the policy's resolver, and loopback stays allowed.
    let ctx = context(EgressPolicy {
        allowed_hosts: Some(vec!["localhost".parse().unwrap()]),
        ..EgressPolicy::default()
    })
    .await;
    let (base, server) = serve_once(|_captured, mut stream| async move {
        respond_whole(
            &mut stream,
            "200 OK",
            "application/json",
            r#"{"text":"local"}"#,
        )
        .await;
    })
    .await;
    let port = base.rsplit(':').next().unwrap();
    let session = ctx
        .session_of(types::AgentBackendInput::webhook(format!(
            "http://localhost:{port}/hook"
        )))
        .await;
    assert_eq!(ask(&ctx, &session, "hi").await, Ok("local".to_string()));
    joined(server).await;
}
