//! Outbound webhooks end to end: the API's registration (`api`), deliveries to a real receiver on this machine
//! (`delivery`: signatures, every event type, filters, a receiver down then up, giving up), a restart on the
//! same SQLite file and two instances on one PostgreSQL database (`instances`). The `Receiver` here is that
//! receiver: HTTP/1.1 on 127.0.0.1, verifying every delivery with the SDK's helper.
//!
//! Nothing sleeps to let time pass: retries come due when a test moves the `MockClock`, and arrivals are
//! awaited on a channel with a timeout.

mod api;
mod delivery;
mod instances;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use agent_sessions::types;
use agent_sessions::webhooks::{self, VerifyError};
use agent_sessions_server::clock::{Clock, MockClock};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::support::*;

/// How a delivery is verified: the usual tolerance of Standard Webhooks receivers.
const TOLERANCE: StdDuration = StdDuration::from_secs(300);

/// What the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answering {
    /// 200 to a delivery whose signature verifies (400 otherwise).
    Ok,
    /// 503, whatever came.
    Unavailable,
}

/// One delivery as the receiver got it, and what it answered.
#[derive(Debug)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub body: Vec<u8>,
    pub verified: Result<(), VerifyError>,
    pub status: u16,
    pub user_agent: String,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a delivery's body is JSON")
    }

    /// The body as the SDK's type for it: the contract's `WebhookDelivery`.
    pub fn delivery(&self) -> types::WebhookDelivery {
        serde_json::from_slice(&self.body).expect("a delivery's body is a WebhookDelivery")
    }

    pub fn kind(&self) -> String {
        self.json()["type"].as_str().unwrap_or_default().to_string()
    }

    pub fn session(&self) -> String {
        self.json()["data"]["sessionId"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

struct State {
    answering: Mutex<Answering>,
    secret: Mutex<Option<String>>,
    clock: Arc<MockClock>,
    tx: mpsc::UnboundedSender<Received>,
}

/// A webhook receiver on 127.0.0.1 that can stop listening (connections are refused) and listen again on the
/// same port.
pub struct Receiver {
    pub url: String,
    addr: SocketAddr,
    state: Arc<State>,
    accepting: Option<JoinHandle<()>>,
    rx: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    /// A receiver answering 200, which verifies signatures at the time of `clock` (the server's).
    pub async fn start(clock: Arc<MockClock>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            answering: Mutex::new(Answering::Ok),
            secret: Mutex::new(None),
            clock,
            tx,
        });
        let accepting = Some(tokio::spawn(accept(listener, state.clone())));
        Self {
            url: format!("http://{addr}/hook"),
            addr,
            state,
            accepting,
            rx,
        }
    }

    /// The secret deliveries must be signed with (from `createWebhook`'s answer).
    pub fn expect_secret(&self, secret: &str) {
        *self.state.secret.lock().unwrap() = Some(secret.to_string());
    }

    pub fn answer(&self, answering: Answering) {
        *self.state.answering.lock().unwrap() = answering;
    }

    /// Stops listening: connections to the port are refused from now on.
    pub async fn refuse(&mut self) {
        if let Some(task) = self.accepting.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn listen_again(&mut self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("bind the same port again");
        self.accepting = Some(tokio::spawn(accept(listener, self.state.clone())));
    }

    /// The next delivery that arrives.
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a delivery arrives in time")
            .expect("the receiver runs")
    }

    /// Deliveries until `n` of them were answered 200; all of them, in arrival order.
    pub async fn until_delivered(&mut self, n: usize) -> Vec<Received> {
        let mut all = Vec::new();
        while all.iter().filter(|r: &&Received| r.status == 200).count() < n {
            all.push(self.next().await);
        }
        all
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = self.accepting.take() {
            task.abort();
        }
    }
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(serve(stream, state.clone()));
    }
}

/// One connection, one request: read it, verify it, record it, answer it, close.
async fn serve(mut stream: TcpStream, state: Arc<State>) {
    let Some((headers, body)) = read_request(&mut stream).await else {
        return;
    };
    let header = |name: &str| headers.get(name).cloned().unwrap_or_default();
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let secret = state.secret.lock().unwrap().clone().unwrap_or_default();
    let now = state.clock.now().timestamp();
    let verified = webhooks::verify_at(&secret, &id, &timestamp, &signature, &body, TOLERANCE, now);
    let status = match (*state.answering.lock().unwrap(), &verified) {
        (Answering::Unavailable, _) => 503,
        (Answering::Ok, Ok(())) => 200,
        (Answering::Ok, Err(_)) => 400,
    };
    let _ = state.tx.send(Received {
        id,
        timestamp,
        body,
        verified,
        status,
        user_agent: header("user-agent"),
    });
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Service Unavailable",
    };
    let answer =
        format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A request's headers (names lowercased) and its body's exact bytes; None if the client left early.
async fn read_request(stream: &mut TcpStream) -> Option<(HashMap<String, String>, Vec<u8>)> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let mut piece = [0u8; 4096];
        let n = stream.read(&mut piece).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&piece[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let headers: HashMap<String, String> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut piece = [0u8; 4096];
        let n = stream.read(&mut piece).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&piece[..n]);
    }
    Some((headers, body))
}

/// Registers a webhook for `receiver` through the SDK, with these event types (None: all), and tells the
/// receiver its secret.
pub async fn register(
    ctx: &TestContext,
    receiver: &Receiver,
    events: Option<&[types::WebhookEventType]>,
) -> types::CreatedWebhook {
    let body = types::CreateWebhookRequest {
        url: receiver.url.clone(),
        events: events.map(<[_]>::to_vec).unwrap_or_default(),
    };
    let created = ok(
        "create_webhook",
        ctx.client.create_webhook().body(body).send(),
    )
    .await;
    receiver.expect_secret(&created.secret);
    created
}

/// Moves the server's clock and wakes its dispatcher, so that retries due by then go at once.
pub fn advance(ctx: &TestContext, by: chrono::Duration) {
    ctx.clock.advance(by);
    ctx.wake_webhooks();
}

/// Waits until `check` holds, looking again after each attempt the dispatcher records; fails after `WAIT`. For
/// states a test cannot be told of at the receiver (a refused connection leaves no trace there), only in the
/// store, where attempts record them.
pub async fn eventually<F, Fut>(ctx: &TestContext, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut recorded = ctx.webhook_attempts();
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            // Seen before the check: an attempt recorded during it wakes the wait below.
            recorded.borrow_and_update();
            if check().await {
                return;
            }
            if recorded.changed().await.is_err() {
                // The dispatcher stopped: nothing will change any more; the timeout reports it.
                std::future::pending::<()>().await;
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "never happened: {what}");
}

/// The types of the deliveries answered 200 for each session, in arrival order.
pub fn delivered_by_session(received: &[Received]) -> HashMap<String, Vec<String>> {
    let mut by_session: HashMap<String, Vec<String>> = HashMap::new();
    for r in received.iter().filter(|r| r.status == 200) {
        by_session.entry(r.session()).or_default().push(r.kind());
    }
    by_session
}

/// Asserts every delivery verified, and each event id was answered 200 exactly once; returns how many ids.
pub fn assert_once_each(received: &[Received]) -> usize {
    let mut successes: HashMap<&str, usize> = HashMap::new();
    for r in received {
        assert_eq!(r.verified, Ok(()), "delivery {} did not verify", r.id);
        assert_eq!(r.json()["id"], r.id.as_str(), "webhook-id is the body's id");
        if r.status == 200 {
            *successes.entry(r.id.as_str()).or_default() += 1;
        }
    }
    for (id, n) in &successes {
        assert_eq!(*n, 1, "event {id} was delivered {n} times");
    }
    successes.len()
}
