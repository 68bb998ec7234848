//! Failures as the person at the terminal sees them: a clear message on stderr, nothing on stdout, and an exit
//! code per kind (3 unreachable, 4 denied, 5 not found, 6 expired).

use crate::support::{run, Server};

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_is_down_is_named_with_how_to_start_it() {
    // A port that was free a moment ago and that nothing listens on now.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    drop(listener);
    let down = run(&url, &["health"]).await;
    let said = down.failed(3);
    assert!(
        said.contains(&format!(
            "cannot reach the server at {url}: connection refused; is it running?"
        )),
        "{said}"
    );
    assert!(
        said.contains("agent-sessions-server"),
        "how to start it: {said}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_api_key_says_which_flag_and_variable() {
    let server = Server::with_keys(&["test-key"]).await;
    let refused = run(&server.url, &["sessions", "list"]).await;
    let said = refused.failed(4);
    assert!(said.contains("requires an API key"), "{said}");
    assert!(
        said.contains("--api-key") && said.contains("AGENT_SESSIONS_API_KEY"),
        "{said}"
    );

    let wrong = run(&server.url, &["sessions", "list", "--api-key", "wrong"]).await;
    assert!(
        wrong
            .failed(4)
            .contains("refused the credentials given (--api-key"),
        "{wrong:?}"
    );

    let listed = run(
        &server.url,
        &["sessions", "list", "--json", "--api-key", "test-key"],
    )
    .await;
    assert_eq!(listed.json()["total"], 0);
    // The key from the environment works as the flag does.
    let mut command = crate::support::command(&server.url, &["agents", "list", "--json"]);
    let output = command
        .env("AGENT_SESSIONS_API_KEY", "test-key")
        .output()
        .await
        .expect("runs");
    assert!(output.status.success(), "{output:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_token_outside_its_session_is_forbidden() {
    let server = Server::with_keys(&["test-key"]).await;
    let session = server.create_session().await;
    let token = session.session_token.clone().expect("a token");
    let id = session.session_id.to_string();

    let own = run(
        &server.url,
        &["sessions", "get", &id, "--json", "--token", &token],
    )
    .await;
    assert_eq!(own.json()["sessionId"], id.as_str());
    let listing = run(&server.url, &["sessions", "list", "--token", &token]).await;
    let said = listing.failed(4);
    assert!(said.starts_with("agent-sessions: forbidden"), "{said}");
    assert!(said.contains("covers only its own session"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_session_is_not_found() {
    let server = Server::start().await;
    let id = uuid::Uuid::new_v4().to_string();
    for command in ["get", "delete"] {
        let missing = run(&server.url, &["sessions", command, &id]).await;
        let said = missing.failed(5);
        assert!(said.contains(&format!("session {id} not found")), "{said}");
    }
    let agent = run(&server.url, &["agents", "delete", &id]).await;
    assert!(
        agent.failed(5).contains(&format!("agent {id} not found")),
        "{agent:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_session_says_so() {
    let server = Server::start().await;
    let id = server.create_session().await.session_id.to_string();
    server.advance_minutes(31).await;
    let expired = run(&server.url, &["sessions", "get", &id]).await;
    assert!(
        expired
            .failed(6)
            .contains(&format!("session {id} has expired")),
        "{expired:?}"
    );
}
