//! `events tail`: a session's events printed as they come, as lines or JSON, across a server restart, ending
//! when the session does.

use agent_sessions::types;

use crate::support::{Running, Server};

async fn send(server: &Server, id: &str, content: &str) {
    let request = types::SendMessageRequest {
        content: content.into(),
        attachments: Vec::new(),
        metadata: Default::default(),
        transport: Some(types::TransportType::Http),
        mode: None,
        client_message_id: None,
    };
    let sent = server
        .client
        .send_message()
        .session_id(id)
        .body(request)
        .send()
        .await;
    sent.expect("send_message");
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_prints_messages_sent_through_the_api() {
    let server = Server::start().await;
    let id = server.create_session().await.session_id.to_string();
    let mut tail = Running::spawn(&server.url, &["events", "tail", &id]);
    tail.stderr_line("Following the events of session").await;
    send(&server, &id, "hello from the API").await;
    let user = tail.stdout_line("message user: hello from the API").await;
    assert!(user.starts_with('#'), "with its event id: {user}");
    tail.stdout_line("message agent: Echo: hello from the API")
        .await;
    tail.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_json_prints_one_object_per_event_and_ends_with_the_session() {
    let server = Server::start().await;
    let id = server.create_session().await.session_id.to_string();
    let mut tail = Running::spawn(&server.url, &["events", "tail", &id, "--json"]);
    tail.stderr_line("Following the events of session").await;
    send(&server, &id, "json please").await;
    let line = tail.stdout_line("json please").await;
    let event: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
    assert_eq!(event["event"], "message");
    assert_eq!(event["data"]["content"], "json please");
    assert!(event["id"].is_string(), "{event}");

    server
        .client
        .delete_session()
        .session_id(&id)
        .send()
        .await
        .expect("deleted");
    let ended = tail.finish().await;
    assert_eq!(ended.code, 0, "{ended:#?}");
    assert!(ended.stdout.contains(r#""event":"deleted""#), "{ended:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_resumes_after_the_server_restarts() {
    let server = Server::start().await;
    let id = server.create_session().await.session_id.to_string();
    let mut tail = Running::spawn(&server.url, &["events", "tail", &id]);
    tail.stderr_line("Following the events of session").await;
    send(&server, &id, "before").await;
    tail.stdout_line("message agent: Echo: before").await;

    // The stream breaks; what is sent before the tail reconnects is replayed from its last event id.
    let server = server.restart().await;
    send(&server, &id, "after").await;
    tail.stdout_line("message user: after").await;
    tail.stdout_line("message agent: Echo: after").await;
    tail.kill().await;
}
