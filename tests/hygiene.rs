//! Hostile and departed clients: slow request heads are cut at the header timeout while others are served, idle
//! keep-alive connections close at the idle timeout, at the connection cap idle connections give way to newcomers
//! and busy ones keep flowing while newcomers wait, a thousand idle event streams leave room for ordinary
//! requests, a departed stream client frees its slot at once, the DNS-rebinding guard, and sends that wait for a
//! reply end at once when their session is deleted.
//!
//! Figures (latencies, cut times) are printed; run with `--nocapture` to see them.

use std::time::{Duration, Instant};

use agent_sessions::streams::ExchangeEvent;
use agent_sessions::types;
use agent_sessions_server::ConnectionSettings;
use futures::StreamExt;
use poem::web::Data;
use poem::{handler, post, EndpointExt, Route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::support::*;

/// Short clocks, so that the tests take a second or two: real time, as the server's timers are real.
fn short_clocks(header: Duration, idle: Duration, max_connections: usize) -> ConnectionSettings {
    ConnectionSettings {
        header_read_timeout: header,
        idle_timeout: idle,
        max_connections,
        ..ConnectionSettings::default()
    }
}

fn host_port(ctx: &TestContext) -> String {
    ctx.base_url.trim_start_matches("http://").to_string()
}

/// Waits until the peer closes or resets the connection; returns how long that took from `since`.
async fn closed_after(socket: &mut TcpStream, since: Instant) -> Duration {
    let mut buf = [0u8; 4096];
    let closed = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, closed)
        .await
        .expect("the server closes the connection in time");
    since.elapsed()
}

/// Opens an event stream over a raw connection; returns once the response head has arrived.
/// Waits until `open` event streams hold a slot.
async fn open_streams_reach(
    count: &mut tokio::sync::watch::Receiver<usize>,
    open: usize,
    what: &str,
) {
    let reached = tokio::time::timeout(WAIT, count.wait_for(|n| *n == open)).await;
    let reached = reached.map(|r| r.is_ok());
    assert_eq!(reached, Ok(true), "{what}: still {} open", *count.borrow());
}

async fn open_stream(addr: &str, session: &Uuid) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /api/messaging/sessions/{session}/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
            .await
            .expect("the stream answers in time")
            .expect("read");
        assert!(n > 0, "the server closed the stream before answering");
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    socket
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `n` health checks on one kept-alive client, one after the other; their latencies, sorted.
async fn latencies(ctx: &TestContext, n: usize) -> Vec<Duration> {
    let client = reqwest::Client::new();
    let url = ctx.url("/api/messaging/sessions/health");
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let resp = tokio::time::timeout(WAIT, client.get(&url).send())
            .await
            .expect("answered in time")
            .expect("sent");
        assert_eq!(resp.status(), 200);
        resp.bytes().await.expect("body");
        all.push(started.elapsed());
    }
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_at_the_header_timeout_while_others_are_served() {
    let header = Duration::from_secs(1);
    let ctx = TestContext::with_options(TestOptions {
        connections: short_clocks(header, Duration::from_secs(60), 2048),
        ..Default::default()
    })
    .await;
    let addr = host_port(&ctx);
    const SLOW: usize = 300;
    // A third say nothing, a third send half a request line and stop, a third trickle a header byte every 200 ms
    // (activity that would keep an idle timer from ever firing).
    let mut slow = Vec::new();
    for i in 0..SLOW {
        let addr = addr.clone();
        slow.push(tokio::spawn(async move {
            let since = Instant::now();
            let mut socket = TcpStream::connect(&addr).await.expect("connect");
            match i % 3 {
                0 => {}
                1 => socket
                    .write_all(b"GET /api/messaging/sess")
                    .await
                    .expect("write"),
                _ => {
                    socket
                        .write_all(b"GET /api/messaging/sessions/health HTTP/1.1\r\nX-Slow: ")
                        .await
                        .expect("write");
                    let mut buf = [0u8; 256];
                    let mut tick = tokio::time::interval(Duration::from_millis(200));
                    loop {
                        tokio::select! {
                            _ = tick.tick() => if socket.write_all(b"a").await.is_err() {
                                return since.elapsed();
                            },
                            read = socket.read(&mut buf) => match read {
                                Ok(0) | Err(_) => return since.elapsed(),
                                Ok(_) => panic!("a trickled head got an answer"),
                            },
                        }
                    }
                }
            }
            closed_after(&mut socket, since).await
        }));
    }
    // While they hang on, ordinary clients are served as usual.
    let served = latencies(&ctx, 100).await;
    let mut cut: Vec<Duration> = Vec::new();
    for task in slow {
        cut.push(task.await.expect("slow client"));
    }
    cut.sort();
    println!(
        "slowloris: {SLOW} slow connections; 100 health checks meanwhile: p50 {:?}, max {:?}; slow ones cut after \
         {:?} to {:?} (header timeout {header:?})",
        percentile(&served, 0.5),
        served[served.len() - 1],
        cut[0],
        cut[cut.len() - 1],
    );
    assert!(
        served[served.len() - 1] < Duration::from_secs(2),
        "ordinary requests wait for slow clients: {served:?}"
    );
    assert!(
        cut[0] >= header - Duration::from_millis(50),
        "cut early: {cut:?}"
    );
    assert!(
        cut[cut.len() - 1] < header + Duration::from_secs(3),
        "cut late: {cut:?}"
    );
}

#[tokio::test]
async fn a_kept_alive_connection_closes_at_the_idle_timeout_not_the_header_timeout() {
    let (header, idle) = (Duration::from_millis(300), Duration::from_millis(1500));
    let ctx = TestContext::with_options(TestOptions {
        connections: short_clocks(header, idle, 64),
        ..Default::default()
    })
    .await;
    let addr = host_port(&ctx);
    let mut socket = kept_alive(&addr).await;
    let answered = Instant::now();
    let after = closed_after(&mut socket, answered).await;
    println!(
        "idle keep-alive connection closed {after:?} after its response (idle timeout {idle:?})"
    );
    assert!(after >= idle - Duration::from_millis(50), "{after:?}");
    assert!(after < idle + Duration::from_secs(3), "{after:?}");
}

/// A connection that asked for the health check once, was answered 200, and is kept alive.
async fn kept_alive(addr: &str) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /api/messaging/sessions/health HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = socket.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    socket
}

/// Reads from an open event stream until `needle` arrives.
async fn until_received(socket: &mut TcpStream, needle: &str) {
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
            .await
            .expect("the event arrives in time")
            .expect("read");
        assert!(n > 0, "the stream ended before {needle:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_connection_cap_idle_connections_give_way_and_busy_ones_keep_flowing() {
    const CAP: usize = 6;
    let ctx = TestContext::with_options(TestOptions {
        connections: short_clocks(Duration::from_secs(10), Duration::from_secs(60), CAP),
        ..Default::default()
    })
    .await;
    let addr = host_port(&ctx);
    let session = ctx.create_session(None).await.session_id;
    let health = ctx.url("/api/messaging/sessions/health");
    // A hoarder: one request, then its connection idles, kept alive (for a minute, were the server not full).
    let mut hoarder = kept_alive(&addr).await;
    // Event streams in every other place: the cap is full.
    let mut streams = Vec::new();
    for _ in 0..CAP - 1 {
        streams.push(open_stream(&addr, &session).await);
    }
    // A newcomer is served at once: idle connections give way to it.
    let started = Instant::now();
    let newcomer = tokio::time::timeout(WAIT, reqwest::get(&health))
        .await
        .expect("the newcomer is served")
        .unwrap();
    assert_eq!(newcomer.status(), 200);
    let newcomer_latency = started.elapsed();
    drop(newcomer);
    let hoarder_closed = closed_after(&mut hoarder, started).await;

    // Now every place is busy: a newcomer waits, while the streams already open keep flowing.
    streams.push(open_stream(&addr, &session).await);
    let mut waiting = tokio::spawn({
        let health = health.clone();
        async move { reqwest::get(&health).await.unwrap().status() }
    });
    ctx.service
        .heartbeat(&session.to_string())
        .await
        .expect("a heartbeat, straight through the service (no place for it over HTTP)");
    for stream in &mut streams {
        until_received(stream, "event: session").await;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "with every place busy, the newcomer waits"
    );
    let freeing = Instant::now();
    streams.pop();
    let status = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("served once a place frees")
        .unwrap();
    assert_eq!(status, 200);
    println!(
        "connection cap {CAP}: with the cap full of streams and an idle connection, a newcomer was answered in \
         {newcomer_latency:?} (the idle one closed after {hoarder_closed:?}); with every place busy, streams kept \
         flowing and a newcomer waited, then was answered {:?} after a place freed",
        freeing.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_event_streams_leave_room_for_ordinary_requests() {
    let limit = agent_sessions_server::fd_limit::raise().expect("the open-file limit");
    // Both ends of every connection live in this process.
    const STREAMS: usize = 1000;
    if limit.now < (2 * STREAMS + 200) as u64 {
        panic!(
            "the open-file limit ({}) cannot hold {STREAMS} streams and their clients",
            limit.now
        );
    }
    let ctx = TestContext::with_options(TestOptions {
        max_streams: (STREAMS, STREAMS),
        connections: short_clocks(
            Duration::from_secs(10),
            Duration::from_secs(60),
            STREAMS + 100,
        ),
        ..Default::default()
    })
    .await;
    let addr = host_port(&ctx);
    let session = ctx.create_session(None).await.session_id;
    let opening = Instant::now();
    let streams: Vec<TcpStream> = futures::stream::iter(0..STREAMS)
        .map(|_| open_stream(&addr, &session))
        .buffer_unordered(64)
        .collect()
        .await;
    let opened_in = opening.elapsed();
    assert_eq!(ctx.slots.open(), STREAMS);

    let served = latencies(&ctx, 100).await;
    // The bound on streams answers at once, with the JSON error.
    let over = ctx
        .get_raw(&format!("/api/messaging/sessions/{session}/events"))
        .await;
    assert_error(&over, 503, "SERVICE_UNAVAILABLE");

    let mut count = ctx.slots.watch();
    let leaving = Instant::now();
    drop(streams);
    open_streams_reach(&mut count, 0, "every slot comes back").await;
    let released_in = leaving.elapsed();
    println!(
        "{STREAMS} idle event streams (opened in {opened_in:?}): 100 health checks p50 {:?}, max {:?}; all {STREAMS} \
         slots back {released_in:?} after their clients left",
        percentile(&served, 0.5),
        served[served.len() - 1],
    );
    assert!(
        served[served.len() - 1] < Duration::from_secs(2),
        "{served:?}"
    );
}

#[tokio::test]
async fn a_departed_stream_client_frees_its_slot_at_once() {
    let ctx = TestContext::new().await;
    let addr = host_port(&ctx);
    let session = ctx.create_session(None).await.session_id;
    let mut count = ctx.slots.watch();
    let mut took = Vec::new();
    for _ in 0..5 {
        let socket = open_stream(&addr, &session).await;
        open_streams_reach(&mut count, 1, "the stream opens").await;
        let left = Instant::now();
        drop(socket);
        open_streams_reach(&mut count, 0, "the slot comes back").await;
        took.push(left.elapsed());
    }
    took.sort();
    println!(
        "stream slot released {:?} to {:?} after the client closed (keep-alive interval 15 s)",
        took[0],
        took[took.len() - 1]
    );
    assert!(took[took.len() - 1] < Duration::from_secs(1), "{took:?}");
}

/// A raw GET of the health check with this `Host`.
async fn health_with_host(ctx: &TestContext, host: &str, key: Option<&str>) -> Raw {
    let mut req = reqwest::Client::new()
        .get(ctx.url("/api/messaging/sessions/health"))
        .header("host", host);
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    read_raw(req.send().await.expect("sent")).await
}

#[tokio::test]
async fn an_open_loopback_server_answers_only_loopback_names() {
    let ctx = TestContext::with_options(TestOptions {
        allowed_hosts: vec!["proxy.internal".into()],
        ..Default::default()
    })
    .await;
    let port = host_port(&ctx).rsplit(':').next().unwrap().to_string();
    for host in [
        "evil.example",
        &format!("evil.example:{port}"),
        "localhost.evil.example",
    ] {
        let refused = health_with_host(&ctx, host, None).await;
        assert_error(&refused, 403, "FORBIDDEN");
        let message = refused.2["error"]["message"].as_str().unwrap();
        assert!(message.contains("DNS rebinding"), "{message}");
    }
    // Refused before anything else: routing, preflights.
    for method in [reqwest::Method::GET, reqwest::Method::OPTIONS] {
        let resp = reqwest::Client::new()
            .request(method.clone(), ctx.url("/nowhere"))
            .header("host", "evil.example")
            .header("origin", "http://evil.example")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{method}");
    }
    for host in [
        format!("localhost:{port}"),
        "localhost".into(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("app.localhost:{port}"),
        "proxy.internal".into(),
    ] {
        let (status, _, body) = health_with_host(&ctx, &host, None).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
}

#[tokio::test]
async fn with_keys_the_host_is_not_checked() {
    let ctx = TestContext::with_options(TestOptions::with_keys(&["the-key"])).await;
    let (status, _, body) = health_with_host(&ctx, "api.example.com", Some("the-key")).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = health_with_host(&ctx, "api.example.com", None).await;
    assert_eq!(status, 200, "the health check is public: {body}");
}

/// A webhook agent that never answers; it tells when it is called, and when the call is given up.
struct StuckAgent {
    url: String,
    called: mpsc::UnboundedReceiver<()>,
    abandoned: mpsc::UnboundedReceiver<()>,
}

#[derive(Clone)]
struct StuckSignals {
    called: mpsc::UnboundedSender<()>,
    abandoned: mpsc::UnboundedSender<()>,
}

/// Signals when dropped: the handler's future is dropped when its caller goes away.
struct OnDrop(mpsc::UnboundedSender<()>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl StuckAgent {
    async fn start() -> Self {
        #[handler]
        async fn stuck(Data(signals): Data<&StuckSignals>) -> &'static str {
            let _abandoned = OnDrop(signals.abandoned.clone());
            let _ = signals.called.send(());
            std::future::pending::<()>().await;
            "never"
        }
        let (called_tx, called) = mpsc::unbounded_channel();
        let (abandoned_tx, abandoned) = mpsc::unbounded_channel();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let route = Route::new().at("/hook", post(stuck)).data(StuckSignals {
            called: called_tx,
            abandoned: abandoned_tx,
        });
        tokio::spawn(agent_sessions_server::serve(
            listener,
            route,
            std::future::pending(),
        ));
        Self {
            url,
            called,
            abandoned,
        }
    }

    /// A stuck agent, a server that waits `agent_timeout` for agents, and a session of the agent there.
    async fn with_session(agent_timeout: Duration) -> (Self, TestContext, String) {
        let agent = Self::start().await;
        let options = TestOptions {
            agent_timeout,
            ..Default::default()
        };
        let ctx = TestContext::with_options(options).await;
        let hook = types::AgentBackendInput::webhook(&agent.url);
        let id = ctx.session_of(hook).await;
        (agent, ctx, id)
    }

    async fn until_called(&mut self) {
        tokio::time::timeout(WAIT, self.called.recv())
            .await
            .expect("the agent is called")
            .unwrap();
    }

    async fn until_abandoned(&mut self) {
        tokio::time::timeout(WAIT, self.abandoned.recv())
            .await
            .expect("the agent's call is given up")
            .unwrap();
    }
}

#[tokio::test]
async fn deleting_a_session_ends_its_waiting_http_send_at_once() {
    // An agent timeout far beyond the wait this test allows: only the deletion can end the send in time.
    let (mut agent, ctx, id) = StuckAgent::with_session(Duration::from_secs(60)).await;
    let (client, path_id) = (ctx.client.clone(), id.clone());
    let send = tokio::spawn(async move {
        let request = message("anyone?", types::TransportType::Http);
        let result = client.send_message().session_id(path_id).body(request);
        (api_error(result.send().await), Instant::now())
    });
    agent.until_called().await;
    let deleting = Instant::now();
    ctx.delete(&id).await;
    let ((status, code, text), answered) = tokio::time::timeout(Duration::from_secs(5), send)
        .await
        .expect("the send ends at once")
        .unwrap();
    println!(
        "http send answered {:?} after its session was deleted: {status} {code:?} {text}",
        answered - deleting
    );
    assert_eq!(
        (status, code),
        (404, types::ErrorCode::SessionNotFound),
        "{text}"
    );
    assert!(text.contains("deleted"), "{text}");
    // The worker stops asking the agent too.
    agent.until_abandoned().await;
}

#[tokio::test]
async fn deleting_a_session_ends_its_waiting_sse_send_with_an_error_frame() {
    let (mut agent, ctx, id) = StuckAgent::with_session(Duration::from_secs(60)).await;
    let mut exchange = ctx.exchange(&id, "hello?").await;
    assert!(matches!(
        next(&mut exchange).await,
        ExchangeEvent::UserMessage(_)
    ));
    agent.until_called().await;
    let deleting = Instant::now();
    ctx.delete(&id).await;
    let last = tokio::time::timeout(Duration::from_secs(5), exchange.next())
        .await
        .expect("the exchange ends at once")
        .expect("a last frame")
        .expect("well-formed");
    println!(
        "sse send got {last:?} {:?} after its session was deleted",
        deleting.elapsed()
    );
    assert!(
        matches!(&last, ExchangeEvent::Error(e) if e.code == types::ErrorCode::SessionNotFound && e.error.contains("deleted")),
        "{last:?}"
    );
    let rest = tokio::time::timeout(WAIT, exchange.next())
        .await
        .expect("the stream ends");
    assert!(rest.is_none(), "{rest:?}");
    agent.until_abandoned().await;
}

#[tokio::test]
async fn with_the_session_alive_a_stuck_agent_still_times_out() {
    // The deletion watch does not end other waits: a send to a stuck agent of a live session still gets its
    // AGENT_TIMEOUT, and the events of other sessions do not disturb it.
    let (_agent, ctx, id) = StuckAgent::with_session(Duration::from_millis(500)).await;
    let other = ctx.new_session_id(None).await;
    let (_, result) = tokio::join!(ctx.delete(&other), ctx.try_send(&id, "anyone?"));
    assert_api_error(result, 504, types::ErrorCode::AgentTimeout);
}
