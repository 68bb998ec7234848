//! The `webhook` and `openai` agent backends against real local HTTP servers: request bodies, streamed and
//! whole replies, failures, and the reply size limit. The servers (`fake_backend`) speak HTTP/1.1 by hand so each
//! test controls every byte and write.

use std::sync::Once;
use std::time::Duration;

use agent_sessions_server::agents::{AgentError, AgentRequest, Backends, EgressPolicy};
use agent_sessions_server::domain::{
    iso, Agent, AgentBackend, AgentReply, Attachment, AttachmentKind, Message, OpenAiBackend,
    Session, TimeoutConfigPatch, TimeoutPolicy,
};
use chrono::DateTime;
use serde_json::{json, Map};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::fake_backend::*;

/// Shorter than `WAIT`, so that a chunk that never comes fails on the fake server's assertion, which says what
/// went wrong, rather than on the backend's overall wait.
const CHUNK_WAIT: Duration = Duration::from_secs(5);

/// Waits for the next chunk the backend relays; fails instead of hanging if it never comes.
async fn next_chunk(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(CHUNK_WAIT, rx.recv())
        .await
        .expect("the backend relays each piece before the next is sent")
        .expect("chunk channel open")
}

/// Asks the backend configured by `backend` to answer `request`, under the default egress policy.
async fn ask(
    backend: &AgentBackend,
    request: &AgentRequest,
    tx: &mpsc::UnboundedSender<String>,
) -> Result<AgentReply, AgentError> {
    ask_under(EgressPolicy::default(), backend, request, tx).await
}

async fn ask_under(
    policy: EgressPolicy,
    backend: &AgentBackend,
    request: &AgentRequest,
    tx: &mpsc::UnboundedSender<String>,
) -> Result<AgentReply, AgentError> {
    let backends = Backends::new(policy);
    let answering = backends.for_agent(backend)?;
    tokio::time::timeout(WAIT, answering.reply(request, tx))
        .await
        .expect("backend answers within the wait")
}

fn drain(rx: &mut mpsc::UnboundedReceiver<String>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(chunk) = rx.try_recv() {
        out.push(chunk);
    }
    out
}

/// A session with history user, agent, user (the last with an attachment) and a new user message.
fn exchange(backend: AgentBackend) -> AgentRequest {
    let now = DateTime::from_timestamp(1_735_689_600, 123_000_000).expect("valid instant");
    let agent = Agent {
        id: Uuid::new_v4(),
        name: "Backend Tester".into(),
        backend,
        session_defaults: TimeoutConfigPatch::default(),
        created_at: now,
    };
    let user_id = Uuid::new_v4();
    let mut metadata = Map::new();
    metadata.insert("topic".into(), json!("arithmetic"));
    let timeout = TimeoutPolicy::default().resolve(
        &TimeoutConfigPatch::default(),
        &TimeoutConfigPatch::default(),
    );
    let session = Session::new(agent.id, user_id, metadata, timeout, now);
    let message = |content: &str, is_agent: bool, seconds_ago: i64| Message {
        id: Uuid::new_v4(),
        seq: 0,
        in_reply_to: None,
        session_id: session.id,
        author_id: if is_agent { agent.id } else { user_id },
        is_agent,
        content: content.into(),
        metadata: Default::default(),
        attachments: None,
        created_at: now - chrono::Duration::seconds(seconds_ago),
    };
    let mut history = vec![
        message("hi", false, 30),
        message("hello, human", true, 20),
        message("look at this", false, 10),
    ];
    history[2].attachments = Some(vec![Attachment {
        kind: AttachmentKind::Image,
        url: "https://example.com/a.png".into(),
        name: Some("a.png".into()),
        size: None,
        mime_type: Some("image/png".into()),
    }]);
    let mut new_message = message("what is 2 + 2?", false, 0);
    std::sync::Arc::make_mut(&mut new_message.metadata).insert("lang".into(), json!("en"));
    AgentRequest {
        agent,
        session,
        message: new_message,
        history,
    }
}

fn webhook(url: String) -> AgentBackend {
    AgentBackend::Webhook { url }
}

fn failure(result: Result<AgentReply, AgentError>) -> String {
    match result {
        Err(AgentError::Failed(message)) => message,
        other => panic!("expected AgentError::Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn webhook_json_reply_gets_the_documented_body() {
    let (base, server) = serve_once(|captured, mut stream| async move {
        respond_whole(
            &mut stream,
            "200 OK",
            "application/json; charset=utf-8",
            r#"{"text":"4","thought":"easy","actions":["REPLY"],"extra":1}"#,
        )
        .await;
        captured
    })
    .await;
    let backend = webhook(format!("{base}/hooks/agent?token=abc"));
    let request = exchange(backend.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();

    let reply = ask(&backend, &request, &tx).await.expect("reply");
    assert_eq!(
        reply,
        AgentReply {
            text: "4".into(),
            thought: Some("easy".into()),
            actions: Some(vec!["REPLY".into()]),
        }
    );
    assert_eq!(drain(&mut rx), vec!["4".to_string()]);

    let got = joined(server).await;
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/hooks/agent?token=abc");
    assert!(got
        .header("content-type")
        .is_some_and(|ct| ct.starts_with("application/json")));
    let body = &got.body;
    assert_eq!(
        body["agent"],
        json!({"id": request.agent.id, "name": "Backend Tester"})
    );
    let s = &request.session;
    assert_eq!(
        body["session"],
        json!({
            "sessionId": s.id,
            "channelId": s.channel_id,
            "agentId": s.agent_id,
            "userId": s.user_id,
            "metadata": {"topic": "arithmetic"},
        })
    );
    let m = &request.message;
    assert_eq!(
        body["message"],
        json!({
            "id": m.id,
            "content": "what is 2 + 2?",
            "authorId": m.author_id,
            "isAgent": false,
            "createdAt": iso(m.created_at),
            "metadata": {"lang": "en"},
        }),
        "no attachments key when the message has none"
    );
    let history = body["history"].as_array().expect("history array");
    let summary: Vec<(&str, bool, &str)> = history
        .iter()
        .map(|h| {
            (
                h["content"].as_str().unwrap(),
                h["isAgent"].as_bool().unwrap(),
                h["authorId"].as_str().unwrap(),
            )
        })
        .collect();
    let agent_id = request.agent.id.to_string();
    let user_id = s.user_id.to_string();
    assert_eq!(
        summary,
        vec![
            ("hi", false, user_id.as_str()),
            ("hello, human", true, agent_id.as_str()),
            ("look at this", false, user_id.as_str()),
        ],
        "history oldest first with authors"
    );
    assert_eq!(
        history[2]["attachments"],
        json!([{"type": "image", "url": "https://example.com/a.png", "name": "a.png", "mimeType": "image/png"}])
    );
    assert_eq!(
        history[0]["createdAt"],
        json!(iso(request.history[0].created_at))
    );
}

#[tokio::test]
async fn webhook_streamed_reply_relays_each_piece_as_it_arrives() {
    let (tx, rx) = mpsc::unbounded_channel();
    let pieces = ["Two ", "plus two ", "is four."];
    let (base, server) = serve_once(move |_captured, mut stream| async move {
        let mut rx = rx;
        start_stream(&mut stream, "text/event-stream").await;
        write_piece(&mut stream, b": the agent is thinking\n\n").await;
        for piece in pieces {
            let frame = format!("data: {}\n\n", json!({"text": piece, "seq": 1}));
            write_piece(&mut stream, frame.as_bytes()).await;
            // The next frame is only written once this one was relayed, so a backend that buffered the whole
            // body would never see the end of it.
            assert_eq!(next_chunk(&mut rx).await, piece);
        }
        write_piece(
            &mut stream,
            b"data: {\"done\":true,\"thought\":\"simple sum\",\"actions\":[\"REPLY\",\"NONE\"]}\n\n",
        )
        .await;
        end_stream(&mut stream).await;
        rx
    })
    .await;
    let backend = webhook(format!("{base}/hook"));
    let request = exchange(backend.clone());

    let reply = ask(&backend, &request, &tx).await.expect("reply");
    assert_eq!(
        reply,
        AgentReply {
            text: "Two plus two is four.".into(),
            thought: Some("simple sum".into()),
            actions: Some(vec!["REPLY".into(), "NONE".into()]),
        }
    );
    let mut rx = joined(server).await;
    assert!(drain(&mut rx).is_empty(), "no chunk beyond the pieces");
}

#[tokio::test]
async fn webhook_stream_with_split_frames_and_an_event_done_frame() {
    // CRLF endings, one frame split mid-way through "é" (a two-byte character), a multi-line frame of a piece
    // split over two writes, and a closing `event: done` frame with no blank line before the connection ends.
    let stream_bytes: &[&[u8]] = &[
        b"data: {\"text\":\"Caf\xc3",
        b"\xa9 \"}\r\n\r\ndata: {\"te",
        b"xt\":\"au lait\"}\r",
        b"\n\r\nevent: done\r\ndata: {\"thought\":\"warm\"}",
    ];
    let (base, server) = serve_once(move |_captured, mut stream| async move {
        start_stream(&mut stream, "text/event-stream").await;
        for piece in stream_bytes {
            write_piece(&mut stream, piece).await;
        }
        end_stream(&mut stream).await;
    })
    .await;
    let backend = webhook(format!("{base}/hook"));
    let request = exchange(backend.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();

    let reply = ask(&backend, &request, &tx).await.expect("reply");
    joined(server).await;
    assert_eq!(reply.text, "Café au lait");
    assert_eq!(reply.thought.as_deref(), Some("warm"));
    assert_eq!(reply.actions, None);
    assert_eq!(
        drain(&mut rx),
        vec!["Café ".to_string(), "au lait".to_string()]
    );
}

#[tokio::test]
async fn webhook_error_status_fails() {
    let (base, server) = serve_once(|_captured, mut stream| async move {
        respond_whole(
            &mut stream,
            "500 Internal Server Error",
            "application/json",
            r#"{"text":"not to be used"}"#,
        )
        .await;
    })
    .await;
    let backend = webhook(format!("{base}/hook"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let message = failure(ask(&backend, &exchange(backend.clone()), &tx).await);
    joined(server).await;
    assert!(message.contains("500"), "{message}");
    assert!(drain(&mut rx).is_empty());
}

#[tokio::test]
async fn webhook_reply_without_text_fails() {
    let (base, server) = serve_once(|_captured, mut stream| async move {
        respond_whole(
            &mut stream,
            "200 OK",
            "application/json",
            r#"{"thought":"forgot"}"#,
        )
        .await;
    })
    .await;
    let backend = webhook(format!("{base}/hook"));
    let (tx, _rx) = mpsc::unbounded_channel();
    let message = failure(ask(&backend, &exchange(backend.clone()), &tx).await);
    joined(server).await;
    assert!(message.contains("text"), "{message}");
}

#[tokio::test]
async fn webhook_connection_refused_fails_without_leaking_the_url() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let backend = webhook(format!("http://{addr}/hook?token=s3cr3t-token"));
    let (tx, _rx) = mpsc::unbounded_channel();
    let message = failure(ask(&backend, &exchange(backend.clone()), &tx).await);
    assert!(
        message.starts_with("webhook could not connect: tcp connect error: Connection refused"),
        "names the cause: {message}"
    );
    assert!(!message.contains("s3cr3t-token"), "{message}");
}

/// Under `AGENT_SECRET_`, so that the default egress policy lets an agent name it.
const KEY_VAR: &str = "AGENT_SECRET_BACKENDS_TEST_OPENAI_KEY_5A1F";
const KEY: &str = "sk-test-5a1f-not-a-real-key";

fn set_key_once() {
    static SET: Once = Once::new();
    SET.call_once(|| std::env::set_var(KEY_VAR, KEY));
}

#[tokio::test]
async fn openai_streams_deltas_with_key_and_context() {
    set_key_once();
    let (tx, rx) = mpsc::unbounded_channel();
    let (base, server) = serve_once(move |captured, mut stream| async move {
        let mut rx = rx;
        start_stream(&mut stream, "text/event-stream; charset=utf-8").await;
        write_piece(
            &mut stream,
            b"data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\n",
        )
        .await;
        for piece in ["Hel", "lo", " there"] {
            let frame = format!(
                "data: {}\n\n",
                json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": piece}}]})
            );
            write_piece(&mut stream, frame.as_bytes()).await;
            assert_eq!(next_chunk(&mut rx).await, piece);
        }
        write_piece(
            &mut stream,
            b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
        )
        .await;
        // Anything after [DONE] is not part of the reply.
        write_piece(
            &mut stream,
            b"data: {\"choices\":[{\"delta\":{\"content\":\"IGNORED\"}}]}\n\n",
        )
        .await;
        end_stream(&mut stream).await;
        (captured, rx)
    })
    .await;
    let backend = AgentBackend::OpenAi(OpenAiBackend {
        base_url: format!("{base}/v1/"),
        model: "test-model".into(),
        api_key_env: Some(KEY_VAR.into()),
        system_prompt: Some("You are terse.".into()),
    });
    let request = exchange(backend.clone());

    let reply = ask(&backend, &request, &tx).await.expect("reply");
    assert_eq!(
        reply,
        AgentReply {
            text: "Hello there".into(),
            thought: None,
            actions: None,
        }
    );
    let (got, mut rx) = joined(server).await;
    assert!(drain(&mut rx).is_empty(), "nothing after [DONE] is relayed");
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(
        got.body,
        json!({
            "model": "test-model",
            "stream": true,
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello, human"},
                {"role": "user", "content": "look at this"},
                {"role": "user", "content": "what is 2 + 2?"},
            ],
        })
    );
}

#[tokio::test]
async fn openai_accepts_a_whole_json_completion_and_sends_no_key_when_unset() {
    let (base, server) = serve_once(|captured, mut stream| async move {
        respond_whole(
            &mut stream,
            "200 OK",
            "application/json",
            r#"{"id":"c2","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Four."},"finish_reason":"stop"}]}"#,
        )
        .await;
        captured
    })
    .await;
    let backend = AgentBackend::OpenAi(OpenAiBackend {
        base_url: format!("{base}/v1"),
        model: "local".into(),
        api_key_env: Some("AGENT_SECRET_BACKENDS_TEST_UNSET_5A1F".into()),
        system_prompt: None,
    });
    let request = exchange(backend.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();

    let reply = ask(&backend, &request, &tx).await.expect("reply");
    assert_eq!(reply.text, "Four.");
    assert_eq!(drain(&mut rx), vec!["Four.".to_string()]);
    let got = joined(server).await;
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(got.header("authorization"), None);
    assert_eq!(got.body["stream"], json!(true));
    assert_eq!(
        got.body["messages"][0],
        json!({"role": "user", "content": "hi"}),
        "no system message without a system prompt"
    );
    assert_eq!(got.body["messages"].as_array().map(Vec::len), Some(4));
}

#[tokio::test]
async fn openai_error_answer_fails_with_status_and_message() {
    let (base, server) = serve_once(|_captured, mut stream| async move {
        respond_whole(
            &mut stream,
            "401 Unauthorized",
            "application/json",
            r#"{"error":{"message":"bad key","type":"invalid_request_error"}}"#,
        )
        .await;
    })
    .await;
    let backend = AgentBackend::OpenAi(OpenAiBackend {
        base_url: format!("{base}/v1"),
        model: "test-model".into(),
        api_key_env: None,
        system_prompt: None,
    });
    let (tx, mut rx) = mpsc::unbounded_channel();
    let message = failure(ask(&backend, &exchange(backend.clone()), &tx).await);
    joined(server).await;
    assert!(message.contains("401"), "{message}");
    assert!(message.contains("bad key"), "{message}");
    assert!(drain(&mut rx).is_empty());
}

/// The reply size limit of the tests below: small, so that going past it is quick.
const LIMIT: usize = 64 * 1024;
/// How much a flooding fake server sends at most; far past `LIMIT` and past what socket buffers hold, so that a
/// backend that kept reading would be seen reading it all.
const FLOOD_CAP: usize = 64 * 1024 * 1024;

fn limited() -> EgressPolicy {
    EgressPolicy {
        max_reply_bytes: LIMIT,
        ..EgressPolicy::default()
    }
}

/// Writes `first`, then `piece` over and over as chunks, until a write fails because the client hung up; returns
/// how many bytes went out. Panics if the client took `FLOOD_CAP` bytes without hanging up.
async fn flood<S>(stream: &mut S, first: &[u8], piece: &[u8]) -> usize
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let mut sent = 0;
    // An empty chunk would end the chunked body.
    if !first.is_empty() {
        if try_write_piece(stream, first).await.is_err() {
            return sent;
        }
        sent += first.len();
    }
    while sent < FLOOD_CAP {
        if try_write_piece(stream, piece).await.is_err() {
            return sent;
        }
        sent += piece.len();
    }
    panic!("the client read {FLOOD_CAP} bytes without hanging up");
}

/// A webhook streaming `first` then `piece` forever as `content_type` must fail at the limit and hang up.
async fn webhook_flood_fails(content_type: &'static str, first: &'static [u8], piece: Vec<u8>) {
    let (base, server) = serve_once(move |_captured, mut stream| async move {
        start_stream(&mut stream, content_type).await;
        flood(&mut stream, first, &piece).await
    })
    .await;
    let backend = webhook(format!("{base}/hook"));
    let (tx, _rx) = mpsc::unbounded_channel();
    let message = failure(ask_under(limited(), &backend, &exchange(backend.clone()), &tx).await);
    assert_eq!(
        message, "webhook reply exceeded 65536 bytes",
        "{content_type}"
    );
    let sent = joined(server).await;
    assert!(
        sent > LIMIT,
        "{content_type}: the server got {sent} bytes out"
    );
}

#[tokio::test]
async fn webhook_json_reply_past_the_limit_fails_and_stops_reading() {
    // Several MB in pieces, no newline anywhere.
    webhook_flood_fails("application/json", b"{\"text\":\"", vec![b'x'; 16 * 1024]).await;
}

#[tokio::test]
async fn webhook_stream_with_an_endless_line_fails_at_the_limit() {
    // The SSE parser buffers until a newline; without the cap this line would grow without bound.
    webhook_flood_fails(
        "text/event-stream",
        b"data: {\"text\":\"",
        vec![b'y'; 16 * 1024],
    )
    .await;
}

#[tokio::test]
async fn webhook_stream_of_many_frames_fails_at_the_limit() {
    let frames = "data: {\"text\":\"z\"}\n\n".repeat(512).into_bytes();
    webhook_flood_fails("text/event-stream", b": start\n\n", frames).await;
}

#[tokio::test]
async fn webhook_reply_announced_past_the_limit_is_not_read() {
    let (base, server) = serve_once(|_captured, mut stream| async move {
        use tokio::io::AsyncWriteExt;
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {FLOOD_CAP}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        let piece = vec![b' '; 16 * 1024];
        let mut sent = 0;
        while sent < FLOOD_CAP {
            if stream.write_all(&piece).await.is_err() {
                return sent;
            }
            sent += piece.len();
        }
        panic!("the client read the whole announced body");
    })
    .await;
    let backend = webhook(format!("{base}/hook"));
    let (tx, _rx) = mpsc::unbounded_channel();
    let message = failure(ask_under(limited(), &backend, &exchange(backend.clone()), &tx).await);
    assert_eq!(message, "webhook reply exceeded 65536 bytes");
    joined(server).await;
}

#[tokio::test]
async fn webhook_reply_of_exactly_the_limit_passes_and_one_byte_more_fails() {
    for (extra, ok) in [(0, true), (1, false)] {
        let (base, server) = serve_once(move |_captured, mut stream| async move {
            // `{"text":"…"}` of LIMIT + extra bytes, in two chunks, so the count spans reads.
            let body = format!("{{\"text\":\"{}\"}}", "a".repeat(LIMIT + extra - 11));
            start_stream(&mut stream, "application/json").await;
            let (a, b) = body.as_bytes().split_at(LIMIT / 2);
            write_piece(&mut stream, a).await;
            let _ = try_write_piece(&mut stream, b).await;
            let _ = end_stream_quietly(&mut stream).await;
        })
        .await;
        let backend = webhook(format!("{base}/hook"));
        let (tx, _rx) = mpsc::unbounded_channel();
        let result = ask_under(limited(), &backend, &exchange(backend.clone()), &tx).await;
        joined(server).await;
        match result {
            Ok(reply) if ok => assert_eq!(reply.text.len(), LIMIT - 11),
            Err(AgentError::Failed(message)) if !ok => {
                assert_eq!(message, "webhook reply exceeded 65536 bytes")
            }
            other => panic!("{} bytes: {other:?}", LIMIT + extra),
        }
    }
}

async fn end_stream_quietly<S>(stream: &mut S) -> std::io::Result<()>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    stream.write_all(b"0\r\n\r\n").await?;
    stream.flush().await
}

fn openai_at(base: &str) -> AgentBackend {
    AgentBackend::OpenAi(OpenAiBackend {
        base_url: format!("{base}/v1"),
        model: "m".into(),
        api_key_env: None,
        system_prompt: None,
    })
}

/// An OpenAI-compatible server answering `status` with a `content_type` body that floods.
async fn openai_flood_fails(
    status: &'static str,
    content_type: &'static str,
    first: &'static [u8],
    piece: Vec<u8>,
    expected: &str,
) {
    let (base, server) = serve_once(move |_captured, mut stream| async move {
        use tokio::io::AsyncWriteExt;
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        flood(&mut stream, first, &piece).await
    })
    .await;
    let backend = openai_at(&base);
    let (tx, _rx) = mpsc::unbounded_channel();
    let message = failure(ask_under(limited(), &backend, &exchange(backend.clone()), &tx).await);
    assert_eq!(message, expected);
    let sent = joined(server).await;
    assert!(sent > LIMIT, "the server got {sent} bytes out");
}

#[tokio::test]
async fn openai_stream_past_the_limit_fails() {
    let delta = "data: {\"choices\":[{\"delta\":{\"content\":\"token \"}}]}\n\n".repeat(256);
    openai_flood_fails(
        "200 OK",
        "text/event-stream",
        b"",
        delta.into_bytes(),
        "openai reply exceeded 65536 bytes",
    )
    .await;
}

#[tokio::test]
async fn openai_whole_completion_past_the_limit_fails() {
    openai_flood_fails(
        "200 OK",
        "application/json",
        b"{\"choices\":[{\"message\":{\"content\":\"",
        vec![b'w'; 16 * 1024],
        "openai reply exceeded 65536 bytes",
    )
    .await;
}

#[tokio::test]
async fn openai_error_body_past_the_limit_fails_with_the_status() {
    openai_flood_fails(
        "500 Internal Server Error",
        "application/json",
        b"{\"error\":{\"message\":\"",
        vec![b'e'; 16 * 1024],
        "openai endpoint answered 500 Internal Server Error, and its reply exceeded 65536 bytes",
    )
    .await;
}
