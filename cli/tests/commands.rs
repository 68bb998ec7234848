//! The one-shot commands against a real server: `health`, `agents list|create|delete`, `sessions
//! list|get|delete`, in tables and in `--json`.

use crate::support::{run, Server, DEMO_AGENT};

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_the_server_healthy() {
    let server = Server::start().await;
    server.create_session().await;
    let table = run(&server.url, &["health"]).await;
    assert!(
        table.ok().contains("healthy: 1 active sessions"),
        "{table:?}"
    );
    let json = run(&server.url, &["health", "--json"]).await.json();
    assert_eq!(json["status"], "healthy");
    assert_eq!(json["activeSessions"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_list_shows_the_demo_agent() {
    let server = Server::start().await;
    let json = run(&server.url, &["agents", "list", "--json"]).await.json();
    assert_eq!(json["total"], 1);
    assert_eq!(json["agents"][0]["id"], DEMO_AGENT);
    assert_eq!(json["agents"][0]["backend"]["type"], "echo");
    let table = run(&server.url, &["agents", "list"]).await;
    assert!(table.ok().contains(DEMO_AGENT), "{table:?}");
    assert!(table.ok().contains("Echo"), "{table:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_are_created_and_deleted() {
    let server = Server::start().await;
    let args = [
        "agents",
        "create",
        "--name",
        "Hook",
        "--backend",
        "webhook",
        "--webhook-url",
        "http://127.0.0.1:9/hook",
        "--json",
    ];
    let created = run(&server.url, &args).await.json();
    assert_eq!(created["name"], "Hook");
    assert_eq!(created["backend"]["type"], "webhook");
    assert_eq!(created["backend"]["url"], "http://127.0.0.1:9/hook");
    let id = created["id"].as_str().expect("an id").to_string();
    let agent = server.client.get_agent().agent_id(&id).send().await;
    assert_eq!(agent.expect("the agent exists").name, "Hook");

    let deleted = run(&server.url, &["agents", "delete", &id]).await;
    assert!(deleted.ok().contains(&format!("Deleted agent {id}")));
    let agent = server.client.get_agent().agent_id(&id).send().await;
    assert_eq!(
        agent.expect_err("deleted").status().map(|s| s.as_u16()),
        Some(404)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_create_refuses_a_webhook_without_url() {
    let server = Server::start().await;
    let args = ["agents", "create", "--name", "Hook", "--backend", "webhook"];
    let refused = run(&server.url, &args).await;
    assert!(refused.failed(2).contains("--webhook-url"), "{refused:?}");
    let agents = server.client.list_agents().send().await.expect("list");
    assert_eq!(agents.total, 1, "nothing was created");
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_are_listed_shown_and_deleted() {
    let server = Server::start().await;
    let session = server.create_session().await;
    let id = session.session_id.to_string();

    let listed = run(&server.url, &["sessions", "list", "--json"])
        .await
        .json();
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["sessions"][0]["sessionId"], id.as_str());
    let table = run(&server.url, &["sessions", "list"]).await;
    assert!(table.ok().contains(&id), "{table:?}");
    assert!(table.ok().contains("30m 00s"), "time left: {table:?}");

    let shown = run(&server.url, &["sessions", "get", &id, "--json"])
        .await
        .json();
    assert_eq!(shown["sessionId"], id.as_str());
    assert_eq!(shown["agentId"], DEMO_AGENT);
    let table = run(&server.url, &["sessions", "get", &id]).await;
    assert!(table.ok().contains("auto-renew on"), "{table:?}");

    let deleted = run(&server.url, &["sessions", "delete", &id]).await;
    assert!(deleted.ok().contains(&format!("Deleted session {id}")));
    assert_eq!(server.session_status(&id).await, 404);
}
