//! `chat` driven through its stdin, as a pipe: replies stream back, the session is deleted at the end of input or
//! on `/quit`, the expiry warning shows, `/renew` and `/status` answer, and an expiry ends the chat.

use crate::support::{Running, Server};

/// The session id from the chat's first line, "Chatting with ... in session ID (expires in ...)".
fn session_id(banner: &str) -> String {
    let after = banner
        .split("in session ")
        .nth(1)
        .expect("the session named");
    after.split_whitespace().next().expect("an id").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn piped_lines_are_answered_and_the_session_deleted_at_the_end() {
    let server = Server::start().await;
    let mut chat = Running::spawn(&server.url, &["chat"]);
    let id = session_id(&chat.stdout_line("Chatting with Echo in session").await);
    assert_eq!(server.session_status(&id).await, 200);
    chat.write_line("hello there").await;
    chat.write_line("and again").await;
    let done = chat.finish().await;
    assert_eq!(done.code, 0, "{done:#?}");
    assert!(done.stdout.contains("Echo: hello there"), "{done:#?}");
    assert!(done.stdout.contains("Echo: and again"), "{done:#?}");
    assert!(done
        .stdout
        .contains(&format!("Session {id} ended and deleted")));
    assert_eq!(server.session_status(&id).await, 404, "deleted at EOF");
}

#[tokio::test(flavor = "multi_thread")]
async fn quit_ends_the_chat_with_input_still_open() {
    let server = Server::start().await;
    let mut chat = Running::spawn(
        &server.url,
        &["chat", "--agent", crate::support::DEMO_AGENT],
    );
    let id = session_id(&chat.stdout_line("in session").await);
    chat.write_line("/help").await;
    chat.stdout_line("/renew").await;
    chat.write_line("/nope").await;
    chat.stdout_line("Unknown command /nope").await;
    chat.write_line("/quit").await;
    chat.stdout_line("ended and deleted").await;
    assert_eq!(server.session_status(&id).await, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_deletes_the_session_too() {
    let server = Server::start().await;
    let mut chat = Running::spawn(&server.url, &["chat"]);
    let id = session_id(&chat.stdout_line("in session").await);
    chat.write_line("one").await;
    chat.stdout_line("Echo: one").await;
    chat.interrupt().await;
    chat.stdout_line("ended and deleted").await;
    let done = chat.finish().await;
    assert_eq!(done.code, 0, "{done:#?}");
    assert_eq!(server.session_status(&id).await, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_expiry_warning_shows_and_renew_and_status_answer() {
    let server = Server::start().await;
    let args = ["chat", "--timeout-minutes", "10", "--no-auto-renew"];
    let mut chat = Running::spawn(&server.url, &args);
    let banner = chat.stdout_line("in session").await;
    assert!(banner.contains("expires in 10m 00s"), "{banner}");
    let id = session_id(&banner);
    chat.write_line("hello").await;
    chat.stdout_line("Echo: hello").await;

    // Into the 5-minute warning threshold: the events stream warns, and the chat shows it.
    server.advance_minutes(6).await;
    let warning = chat.stdout_line("The session expires in").await;
    assert!(
        warning.contains("4m 00s") && warning.contains("/renew"),
        "{warning}"
    );

    chat.write_line("/renew").await;
    chat.stdout_line("Renewed: time left 10m 00s").await;
    chat.write_line("/status").await;
    let status = chat.stdout_line("Time left:").await;
    assert!(
        status.contains("10m 00s") && status.contains("renewals: 1"),
        "{status}"
    );

    // Past the timeout: the chat ends by itself (its input still open), saying why.
    server.advance_minutes(11).await;
    let said = chat.stderr_line("has expired").await;
    assert!(
        said.contains(&format!("session {id} has expired")),
        "{said}"
    );
    let ended = chat.finish().await;
    assert_eq!(ended.code, 6, "{ended:#?}");
    assert!(!ended.stdout.contains("deleted"), "{ended:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_agent_is_not_found() {
    let server = Server::start().await;
    let agent = uuid::Uuid::new_v4().to_string();
    let chat = Running::spawn(&server.url, &["chat", "--agent", &agent]);
    let ended = chat.finish().await;
    assert_eq!(ended.code, 5, "{ended:#?}");
    assert!(
        ended.stderr.contains(&format!("agent {agent} not found")),
        "{ended:#?}"
    );
}
