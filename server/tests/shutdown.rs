//! Stopping the `agent-sessions-server` binary with SIGTERM, in each state it can be in: idle; with open event
//! streams (each told to reconnect, then ended at once, cleanly, on SQLite and PostgreSQL); with `sse` and `http`
//! sends waiting for a slow agent (an `error` frame and a 503, never a cut connection); and with a request that
//! never completes (cut at the bound). In every case the process exits with success within its bound
//! (`SHUTDOWN_TIMEOUT_SECONDS`, 10 s by default); a second signal exits at once, with failure.
//!
//! A test binary of its own, next to `binary.rs`: only here does cargo provide the path of the binary it built.
//! Figures are printed; run with `--nocapture` to see them.

#[path = "support/command.rs"]
mod command;
// Only its start and URL are used here.
#[allow(dead_code)]
#[path = "support/postgres.rs"]
mod postgres;

use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use poem::web::Data;
use poem::{handler, post, EndpointExt, Route};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Bounds a broken start or a missing event, not a slow one.
const WAIT: Duration = Duration::from_secs(30);
/// How fast a shutdown with nothing left to wait for must be: far below the 10 s bound.
const PROMPT: Duration = Duration::from_secs(3);

struct Server {
    child: Child,
    base: String,
    /// What the server prints after its listening line.
    lines: mpsc::UnboundedReceiver<String>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_on(None, env).await
    }

    /// On the database `url` names, or on a new SQLite file.
    async fn start_on(url: Option<String>, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = url.unwrap_or_else(|| format!("sqlite:{}", dir.path().join("s.db").display()));
        let mut cmd = Command::from(command::server_command("127.0.0.1", &url));
        cmd.env("RUST_LOG", "info")
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (name, value) in env {
            cmd.env(name, value);
        }
        let mut child = cmd.spawn().expect("the server starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    return rest.split_whitespace().next().unwrap().to_string();
                }
            }
            panic!("the server exited before listening");
        })
        .await
        .expect("the server reports where it listens");
        // Keep reading stdout, so that the server never blocks on a full pipe.
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            base,
            lines: rx,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    /// Waits for a line of the server's output containing `needle`.
    async fn printed(&mut self, needle: &str) {
        tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(needle) {
                    return;
                }
            }
            panic!("the server's output ended before {needle:?}");
        })
        .await
        .expect("the server prints it");
    }

    /// Sends SIGTERM; returns the moment it was sent.
    fn terminate(&self) -> Instant {
        let pid = self.child.id().expect("still running").to_string();
        let sent = Instant::now();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
        sent
    }

    /// Waits for the process to exit; returns its status and how long after `since` it exited.
    async fn exited(&mut self, since: Instant) -> (ExitStatus, Duration) {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the server exits")
            .unwrap();
        (status, since.elapsed())
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let resp = reqwest::Client::new()
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    /// A session with the demo echo agent, or with `agent`.
    async fn session(&self, agent: Option<&str>) -> String {
        let agent = match agent {
            Some(id) => id.to_string(),
            None => self.post("/api/agents", json!({"name": "unused"})).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        };
        let user = "3c90c3cc-0d44-4b50-8888-8dd25736052a";
        self.post(
            "/api/messaging/sessions",
            json!({"agentId": agent, "userId": user}),
        )
        .await["sessionId"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

#[tokio::test]
async fn an_idle_server_stops_at_once() {
    let mut server = Server::start(&[]).await;
    let since = server.terminate();
    let (status, took) = server.exited(since).await;
    println!("idle: exited {took:?} after SIGTERM ({status})");
    assert!(status.success(), "{status}");
    assert!(took < PROMPT, "{took:?}");
}

/// 100 open event streams (on the store `url` names, or SQLite): each gets a last `reconnect` event (without an
/// id) and then the end of its body (not a cut connection), and the process exits promptly, with success.
async fn a_hundred_streams_are_told_to_reconnect(url: Option<String>) {
    // Bounds raised for one client holding many streams of one session.
    let env = [
        ("MAX_STREAMS_PER_SESSION", "100"),
        ("RATE_LIMIT_ANONYMOUS_PER_MINUTE", "100000"),
    ];
    let mut server = Server::start_on(url, &env).await;
    let session = server.session(None).await;
    let client = reqwest::Client::new();
    let mut streams = Vec::new();
    for _ in 0..100 {
        let resp = client
            .get(server.url(&format!("/api/messaging/sessions/{session}/events")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        streams.push(resp.bytes_stream());
    }
    let since = server.terminate();
    let mut last_ended = Duration::ZERO;
    for stream in &mut streams {
        let mut body = Vec::new();
        while let Some(chunk) = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("the stream ends")
        {
            body.extend_from_slice(&chunk.expect("the stream ends cleanly"));
        }
        let body = String::from_utf8(body).unwrap();
        let last = body
            .split("\n\n")
            .filter(|frame| frame.lines().any(|l| l.starts_with("data:")))
            .last()
            .unwrap_or_else(|| panic!("no event before the end: {body:?}"));
        assert!(last.contains("event: reconnect"), "{last:?}");
        assert!(!last.lines().any(|l| l.starts_with("id:")), "{last:?}");
        last_ended = since.elapsed();
    }
    let (status, took) = server.exited(since).await;
    println!("100 event streams: the last ended {last_ended:?} after SIGTERM; exited after {took:?} ({status})");
    assert!(status.success(), "{status}");
    assert!(took < PROMPT, "{took:?}");
}

#[tokio::test]
async fn a_hundred_streams_are_told_to_reconnect_on_sqlite() {
    a_hundred_streams_are_told_to_reconnect(None).await;
}

#[tokio::test]
async fn a_hundred_streams_are_told_to_reconnect_on_postgres() {
    let Some(pg) = tokio::task::spawn_blocking(postgres::Postgres::start)
        .await
        .unwrap()
    else {
        println!("skipped: no PostgreSQL");
        return;
    };
    a_hundred_streams_are_told_to_reconnect(Some(pg.url())).await;
    drop(pg);
}

/// A webhook agent that never answers; it reports each call.
async fn slow_agent() -> (String, mpsc::UnboundedReceiver<()>) {
    #[handler]
    async fn stuck(Data(called): Data<&mpsc::UnboundedSender<()>>) -> &'static str {
        let _ = called.send(());
        std::future::pending::<()>().await;
        "never"
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(agent_sessions_server::serve(
        listener,
        Route::new().at("/hook", post(stuck)).data(tx),
        std::future::pending(),
    ));
    (url, rx)
}

/// The frames of an SSE body: `(event, data)`.
fn frames(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter_map(|frame| {
            let mut event = None;
            let mut data = None;
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).ok();
                }
            }
            Some((event?, data?))
        })
        .collect()
}

#[tokio::test]
async fn waiting_sends_get_an_error_frame_and_a_503_and_the_server_stops_at_once() {
    let (hook, mut called) = slow_agent().await;
    let mut server = Server::start(&[("AGENT_TIMEOUT_SECONDS", "120")]).await;
    let agent = server
        .post(
            "/api/agents",
            json!({"name": "slow", "backend": {"type": "webhook", "url": hook}}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let client = reqwest::Client::new();
    let send = |session: String, transport: &'static str| {
        client
            .post(server.url(&format!("/api/messaging/sessions/{session}/messages")))
            .json(&json!({"content": "hello?", "transport": transport}))
            .send()
    };
    let sse_session = server.session(Some(&agent)).await;
    let mut sse = send(sse_session, "sse").await.unwrap();
    assert_eq!(sse.status(), 200);
    let http_session = server.session(Some(&agent)).await;
    let http = tokio::spawn(send(http_session, "http"));
    // Both replies are being asked for.
    for _ in 0..2 {
        tokio::time::timeout(WAIT, called.recv())
            .await
            .expect("the agent is called")
            .unwrap();
    }
    let mut sse_body = String::new();
    while !sse_body.contains("event: user_message") {
        let chunk = tokio::time::timeout(WAIT, sse.chunk())
            .await
            .unwrap()
            .unwrap();
        sse_body.push_str(&String::from_utf8_lossy(
            &chunk.expect("the exchange goes on"),
        ));
    }

    let since = server.terminate();
    let rest = tokio::time::timeout(WAIT, sse.text())
        .await
        .expect("the exchange ends")
        .expect("the exchange ends cleanly");
    let sse_took = since.elapsed();
    sse_body.push_str(&rest);
    let http = tokio::time::timeout(WAIT, http)
        .await
        .expect("the http send is answered")
        .unwrap()
        .expect("an answer, not a cut connection");
    let http_took = since.elapsed();
    let (status, took) = server.exited(since).await;

    let frames = frames(&sse_body);
    let (event, data) = frames.last().expect("frames");
    println!(
        "waiting sends: sse ended {sse_took:?} after SIGTERM with {event} {data}; http answered {:?} after {http_took:?}; \
         exited after {took:?} ({status})",
        http.status()
    );
    assert_eq!(event, "error", "{sse_body}");
    assert_eq!(data["code"], "SERVICE_UNAVAILABLE", "{data}");
    assert!(
        data["error"].as_str().unwrap().contains("shutting down"),
        "{data}"
    );
    assert_eq!(http.status(), 503);
    let body: Value = http.json().await.unwrap();
    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE", "{body}");
    assert!(status.success(), "{status}");
    assert!(took < PROMPT, "{took:?}");
}

/// A request whose body never arrives in full: the server waits for it (no clock runs while a request is being
/// answered), so only the bound ends the drain. Returns once the server has taken it in.
async fn stuck_request(server: &Server) -> tokio::net::TcpStream {
    let mut socket = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "POST /api/messaging/sessions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: \
         1000\r\n\r\n{{\"agentId\": ",
        server.addr()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    // A health check on another connection proves the stuck request has been taken in.
    let health = reqwest::get(server.url("/api/messaging/sessions/health"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    socket
}

#[tokio::test]
async fn a_request_that_never_completes_is_cut_at_the_bound() {
    let bound = Duration::from_secs(2);
    let mut server = Server::start(&[("SHUTDOWN_TIMEOUT_SECONDS", "2")]).await;
    let mut socket = stuck_request(&server).await;

    let since = server.terminate();
    let mut buf = Vec::new();
    let cut = tokio::time::timeout(WAIT, socket.read_to_end(&mut buf)).await;
    let cut_after = since.elapsed();
    let (status, took) = server.exited(since).await;
    println!(
        "stuck request: connection closed {cut_after:?} after SIGTERM ({} bytes answered); exited after {took:?} \
         ({status}), bound {bound:?}",
        buf.len()
    );
    assert!(cut.is_ok(), "the connection is closed");
    assert!(status.success(), "{status}");
    assert!(
        took < bound,
        "exited after {took:?}, beyond the {bound:?} bound"
    );
    assert!(
        cut_after > bound / 2,
        "the drain waited for the request before cutting it: {cut_after:?}"
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let mut server = Server::start(&[("SHUTDOWN_TIMEOUT_SECONDS", "60")]).await;
    let _socket = stuck_request(&server).await;
    server.terminate();
    server.printed("shutting down").await;
    let since = server.terminate();
    let (status, took) = server.exited(since).await;
    println!("second signal: exited {took:?} after it ({status})");
    assert_eq!(status.code(), Some(1), "not a clean stop: {status}");
    assert!(took < PROMPT, "{took:?}");
}
