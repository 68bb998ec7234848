//! The `webhook` and `openai` agent backends against real local HTTP servers: request bodies, streamed and
//! whole replies, and failures. The servers speak HTTP/1.1 by hand so each test controls every byte and write.

use std::future::Future;
use std::sync::Once;
use std::time::Duration;

use agent_sessions_server::agents::{AgentError, AgentRequest, Backends};
use agent_sessions_server::domain::{
    iso, Agent, AgentBackend, AgentReply, Attachment, AttachmentKind, Message, Session,
    TimeoutConfigPatch, TimeoutPolicy,
};
use chrono::DateTime;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How long any single wait may take before the test fails instead of hanging.
const WAIT: Duration = Duration::from_secs(10);
/// Shorter than `WAIT`, so that a chunk that never comes fails on the fake server's assertion, which says what
/// went wrong, rather than on the backend's overall wait.
const CHUNK_WAIT: Duration = Duration::from_secs(5);

/// A request as the fake server saw it.
#[derive(Debug)]
struct Captured {
    method: String,
    path: String,
    /// Lowercased names.
    headers: Vec<(String, String)>,
    body: Value,
}

impl Captured {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one HTTP/1.1 request with a `Content-Length` body (what reqwest sends for `.json()`).
async fn read_request(stream: &mut TcpStream) -> Captured {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let mut piece = [0u8; 4096];
        let n = stream.read(&mut piece).await.expect("read request");
        assert!(n > 0, "client closed before sending a whole request");
        buf.extend_from_slice(&piece[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("UTF-8 head");
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().expect("request line").split(' ');
    let method = request_line.next().expect("method").to_string();
    let path = request_line.next().expect("path").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().expect("numeric content-length"))
        .expect("request has a content-length");
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut piece = [0u8; 4096];
        let n = stream.read(&mut piece).await.expect("read body");
        assert!(n > 0, "client closed mid-body");
        body.extend_from_slice(&piece[..n]);
    }
    Captured {
        method,
        path,
        headers,
        body: serde_json::from_slice(&body).expect("request body is JSON"),
    }
}

/// A fake server for one exchange: accepts one connection, reads the request, and hands it with the socket to
/// `respond`. The handle yields `respond`'s result, so a server-side assertion failure fails the test.
async fn serve_once<F, Fut, T>(respond: F) -> (String, JoinHandle<T>)
where
    F: FnOnce(Captured, TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send,
    T: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let handle = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let captured = read_request(&mut stream).await;
        respond(captured, stream).await
    });
    (base, handle)
}

async fn respond_whole(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(response.as_bytes())
        .await
        .expect("write response");
    stream.flush().await.expect("flush");
}

/// Starts a chunked response; each `write_piece` is then one separate network write.
async fn start_stream(stream: &mut TcpStream, content_type: &str) {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.flush().await.expect("flush");
}

async fn write_piece(stream: &mut TcpStream, bytes: &[u8]) {
    let mut framed = format!("{:x}\r\n", bytes.len()).into_bytes();
    framed.extend_from_slice(bytes);
    framed.extend_from_slice(b"\r\n");
    stream.write_all(&framed).await.expect("write piece");
    stream.flush().await.expect("flush");
}

async fn end_stream(stream: &mut TcpStream) {
    stream.write_all(b"0\r\n\r\n").await.expect("write end");
    stream.flush().await.expect("flush");
}

/// Waits for the next chunk the backend relays; fails instead of hanging if it never comes.
async fn next_chunk(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(CHUNK_WAIT, rx.recv())
        .await
        .expect("the backend relays each piece before the next is sent")
        .expect("chunk channel open")
}

async fn joined<T>(handle: JoinHandle<T>) -> T {
    tokio::time::timeout(WAIT, handle)
        .await
        .expect("fake server finishes within the wait")
        .expect("fake server assertions hold")
}

/// Asks the backend configured by `backend` to answer `request`.
async fn ask(
    backend: &AgentBackend,
    request: &AgentRequest,
    tx: &mpsc::UnboundedSender<String>,
) -> Result<AgentReply, AgentError> {
    tokio::time::timeout(WAIT, Backends::new().for_agent(backend).reply(request, tx))
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
        metadata: Map::new(),
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
    new_message.metadata.insert("lang".into(), json!("en"));
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
    assert!(message.contains("webhook"), "{message}");
    assert!(!message.contains("s3cr3t-token"), "{message}");
}

const KEY_VAR: &str = "AGENT_BACKENDS_TEST_OPENAI_KEY_5A1F";
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
    let backend = AgentBackend::OpenAi {
        base_url: format!("{base}/v1/"),
        model: "test-model".into(),
        api_key_env: Some(KEY_VAR.into()),
        system_prompt: Some("You are terse.".into()),
    };
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
    let backend = AgentBackend::OpenAi {
        base_url: format!("{base}/v1"),
        model: "local".into(),
        api_key_env: Some("AGENT_BACKENDS_TEST_UNSET_VAR_5A1F".into()),
        system_prompt: None,
    };
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
    let backend = AgentBackend::OpenAi {
        base_url: format!("{base}/v1"),
        model: "test-model".into(),
        api_key_env: None,
        system_prompt: None,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let message = failure(ask(&backend, &exchange(backend.clone()), &tx).await);
    joined(server).await;
    assert!(message.contains("401"), "{message}");
    assert!(message.contains("bad key"), "{message}");
    assert!(drain(&mut rx).is_empty());
}
