//! The real-time fan-out load of `bench/run --fanout`: creates sessions on a running server, subscribes to them
//! over SSE, the plain WebSocket feed and Socket.IO (one third each), sends one message per session per second
//! (spread evenly over each second), and measures how long every agent reply takes to reach every subscriber
//! (from the send's timestamp, and from the reply's `createdAt` commit time), and how many never arrive.
//! Prints a summary and `FANOUT_*=` lines for the script.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use futures::stream::{self, StreamExt, TryStreamExt};
use futures::SinkExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Descriptors beyond the subscribers and the send pool: session creation, the runtime, stdio.
const FD_MARGIN: u64 = 200;
/// The largest latency recorded, in microseconds (larger ones are clamped): 10 minutes.
const MAX_LATENCY_US: u64 = 600_000_000;

#[derive(Parser, Debug)]
#[command(about = "Real-time fan-out load on a running server (bench/run --fanout)")]
struct Args {
    /// The server, e.g. http://127.0.0.1:3000 (loopback only).
    #[arg(long)]
    url: String,
    /// An API key, sent as `X-API-KEY` (and as the Socket.IO handshake's `apiKey`).
    #[arg(long)]
    api_key: Option<String>,
    /// Sessions created, each sent one message a second.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Subscribers, spread evenly over the sessions and over SSE, WebSocket and Socket.IO.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// HTTP connections for the sends (requests in flight at most).
    #[arg(long, default_value_t = 64)]
    pool: usize,
    /// Subscribers connecting at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Longest wait for every subscriber to be connected and joined, in seconds.
    #[arg(long, default_value_t = 180)]
    connect_timeout: u64,
    /// Longest wait for stragglers after the last send, in seconds.
    #[arg(long, default_value_t = 5)]
    grace: u64,
    /// The kinds of subscriber, comma-separated among `sse`, `ws` and `socketio` (to tell their costs apart).
    #[arg(long, default_value = "sse,ws,socketio", value_delimiter = ',')]
    kinds: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sse,
    Ws,
    SocketIo,
}

const KINDS: [Kind; 3] = [Kind::Sse, Kind::Ws, Kind::SocketIo];

impl Kind {
    fn index(self) -> usize {
        self as usize
    }
    /// The name in the `FANOUT_<NAME>_*` lines.
    fn key(self) -> &'static str {
        match self {
            Kind::Sse => "SSE",
            Kind::Ws => "WS",
            Kind::SocketIo => "SOCKETIO",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Kind::Sse => "SSE",
            Kind::Ws => "WebSocket",
            Kind::SocketIo => "Socket.IO",
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// What one kind of subscriber received.
struct KindStats {
    /// Agent replies: receive time − the send's timestamp (µs).
    reply_from_send: Mutex<Histogram<u64>>,
    /// Agent replies: receive time − the reply's `createdAt` (ms resolution, so up to 1 ms too high) (µs).
    reply_from_commit: Mutex<Histogram<u64>>,
    /// The user's own message event (SSE and WebSocket only): receive time − the send's timestamp (µs).
    user_from_send: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    user_delivered: AtomicU64,
    /// Replies whose text is not one of ours, or whose number is out of range.
    foreign: AtomicU64,
}

impl KindStats {
    fn new() -> Self {
        Self {
            reply_from_send: Mutex::new(histogram()),
            reply_from_commit: Mutex::new(histogram()),
            user_from_send: Mutex::new(histogram()),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            user_delivered: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
        }
    }
}

/// One subscriber's counts, read after the run.
struct SubState {
    kind: Kind,
    session: usize,
    received: AtomicU64,
    /// How far its connection got (for the report of those that never became ready): see [`STAGES`].
    stage: AtomicU8,
    /// The feed ended (or failed) before the run was over.
    ended: AtomicBool,
}

/// The stages of a subscriber's connection, by [`SubState::stage`].
const STAGES: [&str; 6] = [
    "waiting for a connect slot",
    "connecting (TCP, HTTP request or WebSocket upgrade)",
    "Socket.IO: upgraded, waiting for the Engine.IO open or the namespace connect",
    "Socket.IO: connected, waiting for connection_established",
    "Socket.IO: join sent, waiting for channel_joined",
    "ready",
];

/// What every task shares.
struct Shared {
    kinds: [KindStats; 3],
    /// Unique agent replies delivered, over all subscribers.
    delivered: AtomicU64,
    /// Notified at every unique delivery (the end of the run waits on it).
    progress: Notify,
    /// Messages sent per session (`--seconds`): the size of each subscriber's record of what it saw.
    per_session: usize,
    /// Every reply's receipt: (session, message number, µs). The first subscriber to receive a reply received
    /// it after its commit, so the time from that first receipt to each other is a lower bound of the latency
    /// from the commit, as the reply's `createdAt` (taken before its commit) gives an upper one.
    receipts: Mutex<Vec<(u32, u32, u64)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Microseconds since the Unix epoch: the one clock the generator's send timestamps and receipts share (there is
/// no server `Clock` here, and `Instant` cannot be written into a message).
#[allow(clippy::disallowed_methods)] // the wall clock is what is measured
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `fanout <µs> <seq>` (the user's message) or `Echo: fanout <µs> <seq>` (the reply): the timestamp and number.
fn parse_content(text: &str) -> Option<(u64, usize)> {
    let rest = text.strip_prefix("Echo: ").unwrap_or(text);
    let mut words = rest.strip_prefix("fanout ")?.split(' ');
    let us = words.next()?.parse().ok()?;
    let seq = words.next()?.trim().parse().ok()?;
    Some((us, seq))
}

/// A subscriber's record of the replies and user messages it received, by number.
struct Seen {
    replies: Vec<bool>,
    users: Vec<bool>,
}

impl Seen {
    fn new(n: usize) -> Self {
        Self {
            replies: vec![false; n],
            users: vec![false; n],
        }
    }
}

impl Shared {
    /// An agent reply `text` reached `sub` now; `created_at_ms` is its commit time, when the event carries it.
    fn reply(&self, sub: &SubState, seen: &mut Seen, text: &str, created_at_ms: Option<f64>) {
        let received_us = now_us();
        let stats = &self.kinds[sub.kind.index()];
        let Some((sent_us, seq)) = parse_content(text).filter(|(_, seq)| *seq < self.per_session)
        else {
            stats.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if std::mem::replace(&mut seen.replies[seq], true) {
            stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let latency = received_us.saturating_sub(sent_us).clamp(1, MAX_LATENCY_US);
        lock(&stats.reply_from_send).saturating_record(latency);
        lock(&self.receipts).push((sub.session as u32, seq as u32, received_us));
        if let Some(ms) = created_at_ms {
            let from_commit = (received_us as f64 - ms * 1000.0).max(1.0) as u64;
            lock(&stats.reply_from_commit).saturating_record(from_commit.min(MAX_LATENCY_US));
        }
        stats.delivered.fetch_add(1, Ordering::Relaxed);
        sub.received.fetch_add(1, Ordering::Relaxed);
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.progress.notify_one();
    }

    /// The user's own message `text` reached `sub` now (SSE and WebSocket feeds carry it).
    fn user(&self, sub: &SubState, seen: &mut Seen, text: &str) {
        let received_us = now_us();
        let stats = &self.kinds[sub.kind.index()];
        let Some((sent_us, seq)) = parse_content(text).filter(|(_, seq)| *seq < self.per_session)
        else {
            return;
        };
        if std::mem::replace(&mut seen.users[seq], true) {
            return;
        }
        let latency = received_us.saturating_sub(sent_us).clamp(1, MAX_LATENCY_US);
        lock(&stats.user_from_send).saturating_record(latency);
        stats.user_delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// A frame of the events feed (SSE's `event:` and `data:`, or the WebSocket message's `event` and `data`).
    fn feed_event(&self, sub: &SubState, seen: &mut Seen, event: &str, data: &Value) {
        if event != "message" {
            return;
        }
        let content = data["content"].as_str().unwrap_or_default();
        if data["isAgent"].as_bool().unwrap_or(false) {
            let created = data["createdAt"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_micros() as f64 / 1000.0);
            self.reply(sub, seen, content, created);
        } else {
            self.user(sub, seen, content);
        }
    }
}

/// The server's address parts, for the WebSocket URLs.
struct Target {
    http: String,
    ws: String,
    api_key: Option<String>,
}

struct Session {
    id: String,
    channel_id: String,
}

async fn create_session(http: &reqwest::Client, base: &str, n: usize) -> anyhow::Result<Session> {
    let session = agent_sessions_bench::create_session(http, base, &format!("fanout{n}")).await?;
    let field = |name: &str| {
        session[name]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("createSession: no {name} in the answer"))
    };
    Ok(Session {
        id: field("sessionId")?,
        channel_id: field("channelId")?,
    })
}

/// Tells the main task that a subscriber is connected (or why it is not), once.
type Ready = mpsc::UnboundedSender<Result<(), String>>;

/// One subscriber: connects (under `gate`), says so, then counts what arrives until aborted.
async fn subscriber(
    target: Arc<Target>,
    sse_client: reqwest::Client,
    session: Arc<Session>,
    sub: Arc<SubState>,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    ready: Ready,
) {
    let feed = Feed {
        target: &target,
        session: &session,
        sub: &sub,
        shared: &shared,
        ready: &ready,
    };
    let result = match gate.acquire_owned().await {
        Ok(permit) => {
            sub.stage.store(1, Ordering::Relaxed);
            match sub.kind {
                Kind::Sse => sse(&feed, &sse_client, permit).await,
                Kind::Ws => ws_feed(&feed, permit).await,
                Kind::SocketIo => socket_io(&feed, permit).await,
            }
        }
        Err(e) => Err(e.into()),
    };
    sub.ended.store(true, Ordering::Relaxed);
    // Only the first message counts: an error after the subscriber said it was ready is its `ended`.
    let _ = ready.send(result.map_err(|e| format!("{} subscriber: {e:#}", sub.kind.label())));
}

/// What a subscriber's connection works with; it holds a connect slot (`permit`) until it is connected.
struct Feed<'a> {
    target: &'a Target,
    session: &'a Session,
    sub: &'a SubState,
    shared: &'a Shared,
    ready: &'a Ready,
}

async fn sse(
    feed: &Feed<'_>,
    client: &reqwest::Client,
    permit: OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    let mut request = client.get(format!(
        "{}/api/messaging/sessions/{}/events",
        feed.target.http, feed.session.id
    ));
    if let Some(key) = &feed.target.api_key {
        request = request.header("x-api-key", key);
    }
    let response = request.send().await.context("GET /events")?;
    let status = response.status();
    if status.as_u16() != 200 {
        bail!("GET /events answered {status}: {}", response.text().await?);
    }
    // The server subscribes before it answers: from here, nothing committed is missed.
    drop(permit);
    feed.sub.stage.store(5, Ordering::Relaxed);
    let _ = feed.ready.send(Ok(()));
    let mut seen = Seen::new(feed.shared.per_session);
    let mut body = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let (mut event, mut data) = (String::new(), String::new());
    while let Some(chunk) = body.next().await {
        buffer.extend_from_slice(&chunk.context("reading the event stream")?);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                // A frame without `event:` is a `message` (the server leaves it out for those). Only those are
                // read: the generator shares the server's cores, and parsing every chunk took a share of them.
                let name = if event.is_empty() { "message" } else { &event };
                if !data.is_empty() && name == "message" {
                    let value: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                    feed.shared.feed_event(feed.sub, &mut seen, name, &value);
                }
                event.clear();
                data.clear();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim_start().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
    }
    bail!("the event stream ended")
}

async fn ws_feed(feed: &Feed<'_>, permit: OwnedSemaphorePermit) -> anyhow::Result<()> {
    let mut request = format!(
        "{}/api/messaging/sessions/{}/ws",
        feed.target.ws, feed.session.id
    )
    .into_client_request()?;
    if let Some(key) = &feed.target.api_key {
        request.headers_mut().insert("x-api-key", key.parse()?);
    }
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(request, ws_config(), false)
        .await
        .context("WebSocket /ws")?;
    drop(permit);
    feed.sub.stage.store(5, Ordering::Relaxed);
    let _ = feed.ready.send(Ok(()));
    let mut seen = Seen::new(feed.shared.per_session);
    while let Some(message) = socket.next().await {
        match message.context("reading the WebSocket")? {
            // Only `message` frames are read (the server writes `"event":"<name>"` without spaces).
            WsMessage::Text(text) if text.as_str().contains("\"event\":\"message\"") => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                let event = frame["event"].as_str().unwrap_or_default();
                feed.shared
                    .feed_event(feed.sub, &mut seen, event, &frame["data"]);
            }
            WsMessage::Close(_) => break,
            _ => {}
        }
    }
    bail!("the WebSocket closed")
}

/// The generator's WebSocket settings: tungstenite's default read buffer is 128 KiB per socket, zero-filled
/// before every read, which for thousands of sockets costs about 1 GB and much CPU; the frames here are small.
fn ws_config() -> Option<WebSocketConfig> {
    Some(
        WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0),
    )
}

/// Socket.IO over Engine.IO v4's websocket transport, framed by hand: `0` open, `40` connect (with the auth),
/// `42[...]` events, `2`/`3` ping and pong.
async fn socket_io(feed: &Feed<'_>, permit: OwnedSemaphorePermit) -> anyhow::Result<()> {
    let url = format!("{}/socket.io/?EIO=4&transport=websocket", feed.target.ws);
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, ws_config(), false)
        .await
        .context("Socket.IO websocket")?;
    feed.sub.stage.store(2, Ordering::Relaxed);
    let auth = match &feed.target.api_key {
        Some(key) => json!({ "apiKey": key }).to_string(),
        None => String::new(),
    };
    let join = json!(["message", {"type": 1, "payload": {"channelId": feed.session.channel_id}}]);
    let mut joined = false;
    let mut seen = Seen::new(feed.shared.per_session);
    let mut permit = Some(permit);
    while let Some(message) = socket.next().await {
        let text = match message.context("reading the Socket.IO websocket")? {
            WsMessage::Text(text) => text,
            WsMessage::Close(_) => break,
            _ => continue,
        };
        let text = text.as_str();
        if text == "2" {
            socket.send(WsMessage::Text("3".into())).await?;
        } else if text.starts_with('0') {
            socket
                .send(WsMessage::Text(format!("40{auth}").into()))
                .await?;
        } else if let Some(error) = text.strip_prefix("44") {
            bail!("Socket.IO connect refused: {error}");
        } else if text.starts_with("40") {
            feed.sub.stage.store(3, Ordering::Relaxed);
        } else if text == "41" {
            break;
        } else if let Some(event) = text
            .strip_prefix("42")
            // Stream chunks and the completion are not measured: not parsed.
            .filter(|e| {
                !e.starts_with("[\"messageStreamChunk\"") && !e.starts_with("[\"messageComplete\"")
            })
        {
            let event: Value = serde_json::from_str(event).unwrap_or(Value::Null);
            match event[0].as_str().unwrap_or_default() {
                "messageBroadcast" => {
                    let data = &event[1];
                    let text = data["text"].as_str().unwrap_or_default();
                    feed.shared
                        .reply(feed.sub, &mut seen, text, data["createdAt"].as_f64());
                }
                // The join waits for the server's greeting: the server registers its event handlers in the
                // connect handler, after the namespace CONNECT (`40`) is sent, and drops an event that arrives
                // before them (seen: about 1 join in 1 000 lost when sent right after `40`).
                "connection_established" if !joined => {
                    feed.sub.stage.store(4, Ordering::Relaxed);
                    socket
                        .send(WsMessage::Text(format!("42{join}").into()))
                        .await?;
                }
                "channel_joined" if !joined => {
                    joined = true;
                    permit = None;
                    feed.sub.stage.store(5, Ordering::Relaxed);
                    let _ = feed.ready.send(Ok(()));
                }
                "messageError" if !joined => bail!("join refused: {}", event[1]),
                _ => {}
            }
        }
    }
    drop(permit);
    bail!("the Socket.IO connection closed")
}

/// Latency figures of one histogram, in milliseconds.
struct Figures {
    count: u64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn figures(h: &Histogram<u64>) -> Figures {
    let ms = |us: u64| us as f64 / 1000.0;
    Figures {
        count: h.len(),
        p50: ms(h.value_at_quantile(0.50)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

/// For each reply, the time from its first receipt by any subscriber to each receipt (the first's is 0) (µs).
fn from_first_receipt(mut receipts: Vec<(u32, u32, u64)>) -> Histogram<u64> {
    receipts.sort_unstable();
    let mut spread = histogram();
    let mut first = None;
    for (session, seq, at) in receipts {
        let start = match first {
            Some((s, n, t)) if (s, n) == (session, seq) => t,
            _ => {
                first = Some((session, seq, at));
                at
            }
        };
        spread.saturating_record((at - start).clamp(1, MAX_LATENCY_US));
    }
    spread
}

fn print_figures(prefix: &str, f: &Figures) {
    println!("{prefix}_P50_MS={:.2}", f.p50);
    println!("{prefix}_P99_MS={:.2}", f.p99);
    println!("{prefix}_P999_MS={:.2}", f.p999);
    println!("{prefix}_MAX_MS={:.2}", f.max);
}

/// The process's peak resident memory, in MB (VmHWM), where /proc tells it.
fn own_peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Raises the soft open-file limit to the hard one; fails if that is still too few for `needed`.
fn raise_fd_limit(needed: u64) -> anyhow::Result<u64> {
    let (_, hard) = rlimit::Resource::NOFILE
        .get()
        .context("reading RLIMIT_NOFILE")?;
    let now = rlimit::increase_nofile_limit(hard).context("raising RLIMIT_NOFILE")?;
    if now < needed {
        bail!(
            "the open-file limit is {now} (hard limit {hard}) but {needed} descriptors are needed (subscribers + \
             send pool + {FD_MARGIN}): raise the hard limit (ulimit -Hn, limits.conf) or use fewer --subscribers"
        );
    }
    Ok(now)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.sessions == 0 || args.subscribers == 0 || args.seconds == 0 || args.pool == 0 {
        bail!("--sessions, --subscribers, --seconds and --pool must be positive");
    }
    let fd_limit = raise_fd_limit(args.subscribers as u64 + args.pool as u64 + FD_MARGIN)?;
    let base = args.url.trim_end_matches('/').to_string();
    let ws_base = match base.strip_prefix("http://") {
        Some(rest) => format!("ws://{rest}"),
        None => bail!("--url must be http://… (loopback), got {base}"),
    };
    // Setup, connect, the sends and the grace period, with room to spare: nothing here runs unbounded.
    let overall = Duration::from_secs(args.connect_timeout + args.seconds + args.grace + 300);
    match tokio::time::timeout(overall, run(args, base, ws_base, fd_limit)).await {
        Ok(result) => result,
        Err(_) => bail!(
            "the run took longer than {} s and was abandoned",
            overall.as_secs()
        ),
    }
}

async fn run(args: Args, base: String, ws_base: String, fd_limit: u64) -> anyhow::Result<()> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = &args.api_key {
        headers.insert("x-api-key", key.parse().context("--api-key")?);
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.pool)
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .build()?;

    // Sessions.
    let started = Instant::now();
    let sessions: Vec<Arc<Session>> = stream::iter(0..args.sessions)
        .map(|n| {
            let http = http.clone();
            let base = base.clone();
            async move { create_session(&http, &base, n).await.map(Arc::new) }
        })
        .buffered(32)
        .try_collect()
        .await?;
    eprintln!(
        "[fanout] created {} sessions in {:.1} s (open-file limit {fd_limit})",
        sessions.len(),
        started.elapsed().as_secs_f64()
    );

    // Subscribers.
    let shared = Arc::new(Shared {
        kinds: [KindStats::new(), KindStats::new(), KindStats::new()],
        delivered: AtomicU64::new(0),
        progress: Notify::new(),
        per_session: args.seconds as usize,
        receipts: Mutex::new(Vec::new()),
    });
    let target = Arc::new(Target {
        http: base.clone(),
        ws: ws_base,
        api_key: args.api_key.clone(),
    });
    // Each SSE stream holds its own connection; no idle ones are kept.
    let sse_client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let mut kinds = Vec::new();
    for name in &args.kinds {
        kinds.push(match name.trim() {
            "sse" => Kind::Sse,
            "ws" => Kind::Ws,
            "socketio" => Kind::SocketIo,
            other => bail!("--kinds: unknown kind '{other}' (sse, ws, socketio)"),
        });
    }
    if kinds.is_empty() {
        bail!("--kinds: name at least one kind");
    }
    let mut subs = Vec::with_capacity(args.subscribers);
    let mut tasks = Vec::with_capacity(args.subscribers);
    let connect_started = Instant::now();
    for i in 0..args.subscribers {
        let session = i % args.sessions;
        // (i + i / sessions) % n mixes the kinds within each session whatever the session count.
        let kind = kinds[(i + i / args.sessions) % kinds.len()];
        let sub = Arc::new(SubState {
            kind,
            session,
            received: AtomicU64::new(0),
            stage: AtomicU8::new(0),
            ended: AtomicBool::new(false),
        });
        subs.push(sub.clone());
        tasks.push(tokio::spawn(subscriber(
            target.clone(),
            sse_client.clone(),
            sessions[session].clone(),
            sub,
            shared.clone(),
            gate.clone(),
            ready_tx.clone(),
        )));
    }
    drop(ready_tx);
    let connect_deadline = tokio::time::Instant::now() + Duration::from_secs(args.connect_timeout);
    let mut connected = 0usize;
    let mut failures: Vec<String> = Vec::new();
    while connected + failures.len() < args.subscribers {
        match tokio::time::timeout_at(connect_deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {
                connected += 1;
                if connected.is_multiple_of(1000) {
                    eprintln!(
                        "[fanout] {connected} subscribers connected ({:.1} s)",
                        connect_started.elapsed().as_secs_f64()
                    );
                }
            }
            Ok(Some(Err(e))) => failures.push(e),
            Ok(None) => break,
            Err(_) => {
                failures.push(format!(
                    "{} subscribers not connected within {} s",
                    args.subscribers - connected - failures.len(),
                    args.connect_timeout
                ));
                break;
            }
        }
    }
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    if !failures.is_empty() {
        for task in &tasks {
            task.abort();
        }
        for f in failures.iter().take(5) {
            eprintln!("[fanout] {f}");
        }
        for kind in KINDS {
            for (n, stage) in STAGES.iter().enumerate().take(STAGES.len() - 1) {
                let count = subs
                    .iter()
                    .filter(|s| s.kind == kind && usize::from(s.stage.load(Ordering::Relaxed)) == n)
                    .count();
                if count > 0 {
                    eprintln!(
                        "[fanout] {} subscribers not ready: {count} {stage}",
                        kind.label()
                    );
                }
            }
        }
        bail!(
            "{} of {} subscribers failed to connect (connected {connected})",
            failures.len(),
            args.subscribers
        );
    }
    eprintln!(
        "[fanout] all {connected} subscribers connected and joined in {connect_seconds:.1} s; sending for {} s",
        args.seconds
    );
    // From here, a message on `ready_rx` is a subscriber whose feed ended: counted from `ended` at the end.

    // Sends: one per session per second, evenly spaced; at most `pool` in flight.
    let sent_ok: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.sessions).map(|_| AtomicU64::new(0)).collect());
    let send_errors = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let send_latency = Arc::new(Mutex::new(histogram()));
    let pool = Arc::new(Semaphore::new(args.pool));
    let total = args.sessions as u64 * args.seconds;
    let period = Duration::from_secs_f64(1.0 / args.sessions as f64);
    let send_started = tokio::time::Instant::now();
    let send_start_unix = now_us() as f64 / 1e6;
    let mut pacing = tokio::time::interval_at(send_started, period);
    pacing.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut late_max = Duration::ZERO;
    for k in 0..total {
        pacing.tick().await;
        let permit = pool.clone().acquire_owned().await?;
        let scheduled = send_started + period.mul_f64(k as f64);
        late_max = late_max.max(tokio::time::Instant::now().saturating_duration_since(scheduled));
        let session = (k % args.sessions as u64) as usize;
        let seq = k / args.sessions as u64;
        let http = http.clone();
        let url = format!(
            "{base}/api/messaging/sessions/{}/messages",
            sessions[session].id
        );
        let (sent_ok, send_errors, first_error, send_latency) = (
            sent_ok.clone(),
            send_errors.clone(),
            first_error.clone(),
            send_latency.clone(),
        );
        tokio::spawn(async move {
            let t0 = Instant::now();
            let body =
                json!({"content": format!("fanout {} {seq}", now_us()), "transport": "websocket"});
            let outcome = match http.post(url).json(&body).send().await {
                Ok(r) if r.status().as_u16() == 201 => {
                    let _ = r.bytes().await;
                    Ok(())
                }
                Ok(r) => {
                    let status = r.status();
                    Err(format!(
                        "sendMessage answered {status}: {}",
                        r.text().await.unwrap_or_default()
                    ))
                }
                Err(e) => Err(format!("sendMessage: {e}")),
            };
            match outcome {
                Ok(()) => {
                    let us = (t0.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_US);
                    lock(&send_latency).saturating_record(us);
                    sent_ok[session].fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    send_errors.fetch_add(1, Ordering::Relaxed);
                    lock(&first_error).get_or_insert(e);
                }
            }
            drop(permit);
        });
    }
    // Every send answered (the permits all back), bounded by the client's own timeout.
    let all = u32::try_from(args.pool).unwrap_or(u32::MAX);
    let _all_back = tokio::time::timeout(Duration::from_secs(60), pool.acquire_many(all))
        .await
        .context("sends still in flight 60 s after the last one")??;
    let send_seconds = send_started.elapsed().as_secs_f64();
    let send_end_unix = now_us() as f64 / 1e6;

    // Stragglers: until every expected reply has arrived, or the grace period is over.
    let expected: u64 = subs
        .iter()
        .map(|s| sent_ok[s.session].load(Ordering::Relaxed))
        .sum();
    let grace_deadline = tokio::time::Instant::now() + Duration::from_secs(args.grace);
    while shared.delivered.load(Ordering::Relaxed) < expected {
        if tokio::time::timeout_at(grace_deadline, shared.progress.notified())
            .await
            .is_err()
        {
            break;
        }
    }
    for task in &tasks {
        task.abort();
    }

    // Figures.
    let sent: u64 = sent_ok.iter().map(|n| n.load(Ordering::Relaxed)).sum();
    let errors = send_errors.load(Ordering::Relaxed);
    let mut overall = histogram();
    let mut overall_commit = histogram();
    let mut lines = Vec::new();
    let mut total_dropped = 0u64;
    let mut total_extra = 0u64;
    let mut total_ended = 0u64;
    println!();
    println!(
        "{:<10} {:>6} {:>9} {:>9} {:>8} {:>5} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "kind",
        "subs",
        "expected",
        "delivered",
        "dropped",
        "dup",
        "p50 ms",
        "p99 ms",
        "max ms",
        "commit99",
        "user p99"
    );
    for kind in KINDS {
        let stats = &shared.kinds[kind.index()];
        let mine: Vec<&Arc<SubState>> = subs.iter().filter(|s| s.kind == kind).collect();
        let expected_k: u64 = mine
            .iter()
            .map(|s| sent_ok[s.session].load(Ordering::Relaxed))
            .sum();
        let (mut dropped, mut extra) = (0u64, 0u64);
        for s in &mine {
            let want = sent_ok[s.session].load(Ordering::Relaxed);
            let got = s.received.load(Ordering::Relaxed);
            dropped += want.saturating_sub(got);
            extra += got.saturating_sub(want);
        }
        let ended = mine
            .iter()
            .filter(|s| s.ended.load(Ordering::Relaxed))
            .count() as u64;
        total_dropped += dropped;
        total_extra += extra;
        total_ended += ended;
        let reply = lock(&stats.reply_from_send).clone();
        let commit = lock(&stats.reply_from_commit).clone();
        let user = lock(&stats.user_from_send).clone();
        overall.add(&reply).ok();
        overall_commit.add(&commit).ok();
        let (f, c, u) = (figures(&reply), figures(&commit), figures(&user));
        let delivered = stats.delivered.load(Ordering::Relaxed);
        let duplicates = stats.duplicates.load(Ordering::Relaxed);
        println!(
            "{:<10} {:>6} {:>9} {:>9} {:>8} {:>5} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>9}",
            kind.label(),
            mine.len(),
            expected_k,
            delivered,
            dropped,
            duplicates,
            f.p50,
            f.p99,
            f.max,
            c.p99,
            if kind == Kind::SocketIo {
                "-".to_string()
            } else {
                format!("{:.2}", u.p99)
            }
        );
        let k = format!("FANOUT_{}", kind.key());
        lines.push(format!("{k}_SUBSCRIBERS={}", mine.len()));
        lines.push(format!("{k}_EXPECTED={expected_k}"));
        lines.push(format!("{k}_DELIVERED={delivered}"));
        lines.push(format!("{k}_DROPPED={dropped}"));
        lines.push(format!("{k}_DUPLICATES={duplicates}"));
        lines.push(format!("{k}_EXTRA={extra}"));
        lines.push(format!("{k}_ENDED={ended}"));
        lines.push(format!(
            "{k}_FOREIGN={}",
            stats.foreign.load(Ordering::Relaxed)
        ));
        for (prefix, fig) in [(k.clone(), &f), (format!("{k}_COMMIT"), &c)] {
            lines.push(format!("{prefix}_P50_MS={:.2}", fig.p50));
            lines.push(format!("{prefix}_P99_MS={:.2}", fig.p99));
            lines.push(format!("{prefix}_P999_MS={:.2}", fig.p999));
            lines.push(format!("{prefix}_MAX_MS={:.2}", fig.max));
        }
        if kind != Kind::SocketIo {
            lines.push(format!(
                "{k}_USER_DELIVERED={}",
                stats.user_delivered.load(Ordering::Relaxed)
            ));
            lines.push(format!("{k}_USER_P50_MS={:.2}", u.p50));
            lines.push(format!("{k}_USER_P99_MS={:.2}", u.p99));
            lines.push(format!("{k}_USER_MAX_MS={:.2}", u.max));
        }
    }
    let all_f = figures(&overall);
    let all_c = figures(&overall_commit);
    let send_f = figures(&lock(&send_latency));
    let total_duplicates: u64 = KINDS
        .iter()
        .map(|k| shared.kinds[k.index()].duplicates.load(Ordering::Relaxed))
        .sum();
    println!(
        "{:<10} {:>6} {:>9} {:>9} {:>8} {:>5} {:>8.2} {:>8.2} {:>8.2} {:>9.2}",
        "all",
        subs.len(),
        expected,
        all_f.count,
        total_dropped,
        total_duplicates,
        all_f.p50,
        all_f.p99,
        all_f.max,
        all_c.p99
    );
    println!();
    println!(
        "sent {sent} messages ({errors} send errors) in {send_seconds:.1} s; sendMessage p50 {:.2} ms, p99 {:.2} ms, \
         max {:.2} ms; sends at most {:.1} ms behind schedule",
        send_f.p50,
        send_f.p99,
        send_f.max,
        late_max.as_secs_f64() * 1000.0
    );
    println!("latency: from the timestamp in the message (taken just before its POST) to the subscriber's receipt; commit99: from the reply's createdAt (millisecond resolution)");
    if let Some(e) = lock(&first_error).as_ref() {
        println!("first send error: {e}");
    }
    println!();
    println!("FANOUT_SESSIONS={}", args.sessions);
    println!("FANOUT_SUBSCRIBERS={}", subs.len());
    println!("FANOUT_SECONDS={}", args.seconds);
    println!("FANOUT_CONNECT_SECONDS={connect_seconds:.1}");
    println!("FANOUT_SEND_SECONDS={send_seconds:.1}");
    println!("FANOUT_SEND_START_UNIX={send_start_unix:.3}");
    println!("FANOUT_SEND_END_UNIX={send_end_unix:.3}");
    println!("FANOUT_SENT={sent}");
    println!("FANOUT_SEND_ERRORS={errors}");
    println!("FANOUT_SEND_P50_MS={:.2}", send_f.p50);
    println!("FANOUT_SEND_P99_MS={:.2}", send_f.p99);
    println!(
        "FANOUT_SEND_LATE_MAX_MS={:.1}",
        late_max.as_secs_f64() * 1000.0
    );
    println!("FANOUT_EXPECTED={expected}");
    println!("FANOUT_DELIVERED={}", all_f.count);
    println!("FANOUT_DROPPED={total_dropped}");
    println!("FANOUT_EXTRA={total_extra}");
    println!("FANOUT_DUPLICATES={total_duplicates}");
    println!("FANOUT_ENDED={total_ended}");
    print_figures("FANOUT", &all_f);
    print_figures("FANOUT_COMMIT", &all_c);
    let receipts = std::mem::take(&mut *lock(&shared.receipts));
    print_figures("FANOUT_FIRST", &figures(&from_first_receipt(receipts)));
    for line in lines {
        println!("{line}");
    }
    if let Some(mb) = own_peak_rss_mb() {
        println!("FANOUT_CLIENT_RSS_PEAK_MB={mb:.1}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::from_first_receipt;

    #[test]
    fn each_receipt_counts_from_the_first_receipt_of_its_reply() {
        // Two replies of session 0 and one of session 1, out of order as tasks push them.
        let receipts = vec![
            (0, 1, 505),
            (0, 0, 130),
            (1, 0, 90),
            (0, 0, 100),
            (0, 1, 500),
        ];
        let spread = from_first_receipt(receipts);
        assert_eq!(spread.len(), 5);
        // The first receipts count as 1 µs (the histogram's floor), then 30 and 5 µs after theirs.
        assert_eq!(spread.max(), 30);
        assert_eq!(spread.value_at_quantile(0.5), 1);
        assert_eq!(spread.count_at(5), 1);
    }
}
