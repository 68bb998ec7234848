//! `TestContext`: a real server on `127.0.0.1:0` over a temp SQLite file, a `MockClock`, and the generated SDK.

use std::path::PathBuf;
use std::sync::Arc;

use agent_sessions::streams::{BoxedEvents, ExchangeEvent, SessionEventFrame};
use agent_sessions::types;
use agent_sessions::{Client, Error, ResponseValue};
use agent_sessions_server::agents::EgressPolicy;
use agent_sessions_server::api::stream_slots::{self, StreamSlots};
use agent_sessions_server::api::{CorsOrigins, HostGuard, HttpSettings, StreamSettings};
use agent_sessions_server::auth::{Access, AccessSettings};
use agent_sessions_server::clock::MockClock;
use agent_sessions_server::domain::TimeoutPolicy;
use agent_sessions_server::service::{ServiceConfig, SessionService};
use agent_sessions_server::store::{self, SessionStore};
use agent_sessions_server::sweeper::Sweeper;
use agent_sessions_server::webhooks::{Dispatcher, WebhookSettings};
use agent_sessions_server::ConnectionSettings;
use chrono::Duration;
use futures::StreamExt;
use std::time::Duration as StdDuration;
use tokio::sync::oneshot;
use uuid::Uuid;

#[derive(Clone)]
pub struct TestOptions {
    pub policy: TimeoutPolicy,
    pub retention: Duration,
    pub agent_timeout: std::time::Duration,
    /// API keys, token settings and rate limits; no keys (an open server) by default.
    pub access: AccessSettings,
    pub cors: CorsOrigins,
    pub max_pending_messages: u32,
    /// Quotas: active sessions per user, messages per session (0: none).
    pub quotas: (u32, u32),
    /// Bounds on open event streams: per session, in total.
    pub max_streams: (usize, usize),
    /// What agent backends may reach and use.
    pub egress: EgressPolicy,
    /// Timeouts and the cap on connections.
    pub connections: ConnectionSettings,
    /// Host names answered besides loopback names, when the server has no keys.
    pub allowed_hosts: Vec<String>,
    /// How many of its newest events each session keeps (0: all).
    pub events_kept: u32,
    /// Keep-alives on idle event streams (SSE comments, WebSocket pings).
    pub keepalive: StdDuration,
    /// The port to listen on (0: any free one); a restart passes the port of the server it replaces, so that
    /// clients reconnect to the same address.
    pub port: u16,
    /// How long a retry under an idempotency key waits for the first request in flight.
    pub idempotency_wait: std::time::Duration,
    /// How webhook deliveries are made (the dispatcher runs as in the server, polling often).
    pub webhooks: WebhookSettings,
    /// Whether `/metrics` is served beside the API (false: as with `--metrics-addr`).
    pub metrics: bool,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            policy: TimeoutPolicy::default(),
            retention: Duration::hours(24),
            agent_timeout: std::time::Duration::from_secs(10),
            access: AccessSettings::default(),
            cors: CorsOrigins::None,
            max_pending_messages: ServiceConfig::default().max_pending_messages,
            quotas: (
                ServiceConfig::default().max_sessions_per_user,
                ServiceConfig::default().max_messages_per_session,
            ),
            max_streams: (
                stream_slots::DEFAULT_PER_SESSION,
                stream_slots::DEFAULT_TOTAL,
            ),
            egress: EgressPolicy::default(),
            connections: ConnectionSettings::default(),
            allowed_hosts: Vec::new(),
            events_kept: store::DEFAULT_EVENTS_PER_SESSION,
            keepalive: StdDuration::from_secs(15),
            port: 0,
            idempotency_wait: ServiceConfig::default().idempotency_wait,
            webhooks: WebhookSettings {
                // Real time, the pace at which a moved mock clock is noticed: short, so that tests are quick.
                poll_interval: StdDuration::from_millis(50),
                ..WebhookSettings::default()
            },
            metrics: true,
        }
    }
}

impl TestOptions {
    /// A server that requires these API keys.
    pub fn with_keys(keys: &[&str]) -> Self {
        Self {
            access: AccessSettings {
                api_keys: keys.iter().map(|k| k.to_string()).collect(),
                ..AccessSettings::default()
            },
            ..Self::default()
        }
    }
}

pub struct TestContext {
    /// The generated SDK, with the first configured API key if there is one.
    pub client: Client,
    pub base_url: String,
    pub clock: Arc<MockClock>,
    pub service: Arc<SessionService>,
    pub store: Arc<dyn SessionStore>,
    /// The demo echo agent created at start.
    pub agent_id: Uuid,
    pub db_path: PathBuf,
    /// The server's bounds on open event streams (`open()` counts them).
    pub slots: Arc<StreamSlots>,
    dir: Arc<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    /// The webhook dispatcher, as the server runs it, and what stops it.
    dispatcher_stop: tokio::sync::watch::Sender<bool>,
    dispatcher: Option<tokio::task::JoinHandle<()>>,
    /// Counts the dispatcher's recorded attempts (see `Dispatcher::recorded`).
    webhook_attempts: tokio::sync::watch::Receiver<u64>,
}

impl TestContext {
    pub async fn new() -> Self {
        Self::with_options(TestOptions::default()).await
    }

    pub async fn with_options(options: TestOptions) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let db_path = dir.path().join("sessions.db");
        Self::start(dir, db_path, Arc::new(MockClock::default()), options).await
    }

    /// A server, as `new`, and a session with its demo agent and this timeout config.
    pub async fn with_session(
        timeout: Option<types::TimeoutConfigInput>,
    ) -> (Self, types::Session) {
        let ctx = Self::new().await;
        let session = ctx.create_session(timeout).await;
        (ctx, session)
    }

    /// Starts a server on an existing database file (a restart), keeping the clock.
    pub async fn start(
        dir: Arc<tempfile::TempDir>,
        db_path: PathBuf,
        clock: Arc<MockClock>,
        options: TestOptions,
    ) -> Self {
        let url = format!("sqlite:{}", db_path.display());
        Self::on_database(url, dir, db_path, clock, options).await
    }

    /// Starts a server instance on any database (several instances may share one), with the given clock.
    pub async fn on_url(url: &str, clock: Arc<MockClock>, options: TestOptions) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let unused = dir.path().join("unused");
        Self::on_database(url.to_string(), dir, unused, clock, options).await
    }

    async fn on_database(
        url: String,
        dir: Arc<tempfile::TempDir>,
        db_path: PathBuf,
        clock: Arc<MockClock>,
        options: TestOptions,
    ) -> Self {
        let store_options = store::StoreOptions {
            events_per_session: options.events_kept,
            ..store::StoreOptions::default()
        };
        let store = store::open_with(&url, &store_options)
            .await
            .expect("open store");
        let service = Arc::new(SessionService::new(
            store.clone(),
            clock.clone(),
            ServiceConfig {
                policy: options.policy,
                retention: options.retention,
                agent_timeout: options.agent_timeout,
                max_pending_messages: options.max_pending_messages,
                max_sessions_per_user: options.quotas.0,
                max_messages_per_session: options.quotas.1,
                egress: options.egress,
                idempotency_wait: options.idempotency_wait,
                ..ServiceConfig::default()
            },
        ));
        let access = Arc::new(
            Access::open(options.access.clone(), &*store, clock.clone())
                .await
                .expect("access control"),
        );
        service.ensure_demo_agent().await.expect("demo agent");
        let agent_id = service.list_agents().await.expect("agents")[0].id;
        let listener = agent_sessions_server::serve::bind("127.0.0.1", options.port)
            .await
            .expect("bind");
        let local = listener.local_addr().expect("addr");
        let base_url = format!("http://{local}");
        let (tx, rx) = oneshot::channel::<()>();
        let slots = StreamSlots::new(options.max_streams.0, options.max_streams.1);
        let app = agent_sessions_server::app(
            service.clone(),
            access.clone(),
            HttpSettings {
                streams: StreamSettings {
                    keepalive: options.keepalive,
                    slots: slots.clone(),
                },
                cors: options.cors.clone(),
                host_guard: HostGuard::for_listener(local, &options.allowed_hosts),
                metrics: options.metrics,
            },
        );
        let (dispatcher_stop, stop_rx) = tokio::sync::watch::channel(false);
        let dispatcher = Dispatcher::new(service.clone(), options.webhooks);
        let webhook_attempts = dispatcher.recorded();
        let dispatcher = dispatcher.spawn(stop_rx);
        let connections = options.connections.clone();
        let stopping = service.clone();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
                stopping.begin_shutdown();
            };
            agent_sessions_server::serve_with(listener, app, shutdown, connections)
                .await
                .expect("server runs");
        });
        let client = match options.access.api_keys.first() {
            Some(key) => Client::with_api_key(&base_url, key).expect("a valid key"),
            None => Client::new(&base_url),
        };
        Self {
            client,
            base_url,
            clock,
            service,
            store,
            agent_id,
            db_path,
            slots,
            dir,
            shutdown: Some(tx),
            server: Some(server),
            dispatcher_stop,
            dispatcher: Some(dispatcher),
            webhook_attempts,
        }
    }

    /// Stops the server gracefully and closes the store; returns what a restart needs.
    pub async fn stop(mut self) -> (Arc<tempfile::TempDir>, PathBuf, Arc<MockClock>) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task ends cleanly");
        }
        let _ = self.dispatcher_stop.send(true);
        if let Some(dispatcher) = self.dispatcher.take() {
            dispatcher
                .await
                .expect("the webhook dispatcher ends cleanly");
        }
        self.store.close().await;
        (self.dir.clone(), self.db_path.clone(), self.clock.clone())
    }

    pub fn sweeper(&self) -> Sweeper {
        Sweeper::new(self.service.clone(), std::time::Duration::from_secs(60))
    }

    /// The port this server listens on (a restart can take it over: `TestOptions::port`).
    pub fn port(&self) -> u16 {
        let port = self.base_url.rsplit(':').next();
        port.and_then(|p| p.parse().ok())
            .expect("the base URL has a port")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// A session with the demo agent and the given timeout config.
    pub async fn create_session(
        &self,
        timeout: Option<types::TimeoutConfigInput>,
    ) -> types::Session {
        let body = types::CreateSessionRequest {
            timeout_config: timeout,
            ..create_request(self.agent_id)
        };
        let call = self.client.create_session().body(body);
        call.send().await.expect("create session").into_inner()
    }

    /// The id of a new session with the demo agent and the given timeout config.
    pub async fn new_session_id(&self, timeout: Option<types::TimeoutConfigInput>) -> String {
        self.create_session(timeout).await.session_id.to_string()
    }

    /// Counts of the stored sessions (active, or expired and retained), straight from the service.
    pub async fn stored_sessions(&self) -> agent_sessions_server::store::SessionCounts {
        let listed = self.service.list(Default::default(), 1000, 0).await;
        listed.expect("list sessions").counts
    }

    pub fn advance_minutes(&self, minutes: i64) {
        self.clock.advance(Duration::minutes(minutes));
    }

    /// Wakes the webhook dispatcher now (after the clock moved), instead of at its next poll.
    pub fn wake_webhooks(&self) {
        self.store.deliveries_queued().notify_one();
    }

    /// Changes each time the webhook dispatcher has recorded an attempt's outcome.
    pub fn webhook_attempts(&self) -> tokio::sync::watch::Receiver<u64> {
        self.webhook_attempts.clone()
    }
}

/// The body of an SDK call that must succeed; a failure panics, naming the operation.
pub async fn ok<T>(operation: &str, call: impl std::future::Future<Output = Outcome<T>>) -> T {
    match call.await {
        Ok(response) => response.into_inner(),
        Err(e) => panic!("{operation} failed: {e:?}"),
    }
}

/// The outcome of an SDK call.
pub type Outcome<T> = Result<ResponseValue<T>, Error<types::ErrorResponse>>;

/// Declares, for operations of the SDK on one session or agent (`getSession`, ...), a `TestContext` method that
/// expects success and returns the body, and a `try_` one that returns the outcome (for `assert_api_error`).
macro_rules! by_id {
    ($id:ident { $($method:ident, $try_method:ident: $operation:ident -> $out:ty;)* }) => {
        impl TestContext {
            $(
                pub async fn $method(&self, id: impl ToString) -> $out {
                    ok(stringify!($operation), self.$try_method(id)).await
                }

                pub async fn $try_method(&self, id: impl ToString) -> Outcome<$out> {
                    self.client.$operation().$id(id.to_string()).send().await
                }
            )*
        }
    };
}

// The SDK calls tests make again and again. A test about a failure hands the `try_` outcome to `assert_api_error`.
by_id!(session_id {
    get, try_get: get_session -> types::Session;
    heartbeat, try_heartbeat: session_heartbeat -> types::Session;
    renew, try_renew: renew_session -> types::Session;
    delete, try_delete: delete_session -> types::DeleteResponse;
    history_page, try_history_page: get_messages -> types::MessageList;
});
by_id!(agent_id {
    agent, try_agent: get_agent -> types::Agent;
    delete_agent, try_delete_agent: delete_agent -> types::DeleteResponse;
});

impl TestContext {
    pub async fn update_timeout(
        &self,
        id: impl ToString,
        update: impl Into<types::TimeoutConfigUpdate>,
    ) -> types::Session {
        ok(
            "update_session_timeout",
            self.try_update_timeout(id, update),
        )
        .await
    }

    pub async fn try_update_timeout(
        &self,
        id: impl ToString,
        update: impl Into<types::TimeoutConfigUpdate>,
    ) -> Outcome<types::Session> {
        let call = self.client.update_session_timeout();
        call.session_id(id.to_string())
            .body(update.into())
            .send()
            .await
    }

    /// Sends `content` with `transport` (not `sse`, whose answer is a stream: `client.send_message_stream`).
    pub async fn send(
        &self,
        id: impl ToString,
        content: &str,
        transport: types::TransportType,
    ) -> types::MessageResponse {
        let call = self.client.send_message().session_id(id.to_string());
        let call = call.body(message(content, transport));
        ok("send_message", call.send()).await
    }

    /// `sendMessage` with the `http` transport, for a test about how it fails (see `assert_api_error`).
    pub async fn try_send(
        &self,
        id: impl ToString,
        content: &str,
    ) -> Outcome<types::MessageResponse> {
        let call = self.client.send_message().session_id(id.to_string());
        call.body(message(content, types::TransportType::Http))
            .send()
            .await
    }

    /// `sendMessage` with the `sse` transport: the exchange, as events.
    pub async fn exchange(&self, id: &str, content: &str) -> BoxedEvents<ExchangeEvent> {
        let request = message(content, types::TransportType::Sse);
        let exchange = self.client.send_message_stream(id, request).await;
        exchange.expect("send_message_stream")
    }

    /// The session's history, oldest first (up to 100 messages, the most one page holds).
    pub async fn history(&self, id: impl ToString) -> Vec<types::Message> {
        let call = self.client.get_messages().session_id(id.to_string());
        let page = ok("get_messages", call.limit(100).send()).await;
        page.messages.into_iter().rev().collect()
    }

    /// The session's events stream, from now on.
    pub async fn events(&self, id: &str) -> BoxedEvents<SessionEventFrame> {
        let events = self.client.session_events(id, None).await;
        events.expect("session_events")
    }

    pub async fn health(&self) -> types::SessionsHealth {
        ok(
            "get_sessions_health",
            self.client.get_sessions_health().send(),
        )
        .await
    }

    pub async fn list(&self) -> types::SessionList {
        ok("list_sessions", self.client.list_sessions().send()).await
    }

    pub async fn agents(&self) -> types::AgentList {
        ok("list_agents", self.client.list_agents().send()).await
    }

    pub async fn create_agent(&self, request: types::CreateAgentRequest) -> types::Agent {
        ok(
            "create_agent",
            self.client.create_agent().body(request).send(),
        )
        .await
    }

    /// A new agent with this backend and no session defaults.
    pub async fn agent_with(&self, backend: impl Into<types::AgentBackendInput>) -> Uuid {
        let request = types::CreateAgentRequest {
            backend: Some(backend.into()),
            ..agent_request("test agent")
        };
        self.create_agent(request).await.id
    }

    /// The id of a session of a new agent with this backend.
    pub async fn session_of(&self, backend: impl Into<types::AgentBackendInput>) -> String {
        let agent_id = self.agent_with(backend).await;
        self.session_with(agent_id).await.session_id.to_string()
    }

    /// A session of a new user with this agent, without a timeout config.
    pub async fn session_with(&self, agent_id: Uuid) -> types::Session {
        let call = self.client.create_session().body(create_request(agent_id));
        ok("create_session", call.send()).await
    }
}

impl Drop for TestContext {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = self.dispatcher_stop.send(true);
    }
}

/// A request to create a session of a new user with this agent, without metadata or a timeout config: the base
/// of the requests tests vary (`CreateSessionRequest { metadata, ..create_request(agent) }`).
pub fn create_request(agent_id: Uuid) -> types::CreateSessionRequest {
    types::CreateSessionRequest {
        agent_id,
        user_id: Uuid::new_v4(),
        metadata: Default::default(),
        timeout_config: None,
    }
}

/// A request to create an agent with the default (echo) backend and no session defaults.
pub fn agent_request(name: &str) -> types::CreateAgentRequest {
    types::CreateAgentRequest {
        name: name.into(),
        backend: None,
        session_defaults: None,
    }
}

/// A partial timeout config with only `timeoutMinutes`.
pub fn timeout_minutes(minutes: f64) -> types::TimeoutConfigInput {
    types::TimeoutConfigInput {
        timeout_minutes: Some(minutes),
        ..Default::default()
    }
}

/// The status, error code and message of an SDK call that must fail with the API's error body (any call: the
/// generated ones, and the hand-written streams, whose success is not `Debug`).
pub fn api_error<T>(
    result: Result<T, agent_sessions::Error<types::ErrorResponse>>,
) -> (u16, types::ErrorCode, String) {
    match result {
        Err(agent_sessions::Error::ErrorResponse(resp)) => {
            let status = resp.status().as_u16();
            let body = resp.into_inner();
            (status, body.error.code, body.error.message)
        }
        Err(other) => panic!("expected an API error response, got {other:?}"),
        Ok(_) => panic!("expected an API error response, got a success"),
    }
}

/// Asserts that an SDK call failed with `status` and `code`; returns the error's message.
pub fn assert_api_error<T>(
    result: Result<T, agent_sessions::Error<types::ErrorResponse>>,
    status: u16,
    code: types::ErrorCode,
) -> String {
    let (got_status, got_code, message) = api_error(result);
    assert_eq!((got_status, got_code), (status, code), "{message}");
    message
}

/// A raw response: the status, the content type, and the body as JSON (`Null` when it is not JSON).
pub type Raw = (u16, String, serde_json::Value);

/// A raw HTTP call, for what the typed SDK cannot send (malformed bodies, wrong methods).
pub async fn raw(
    method: reqwest::Method,
    url: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> Raw {
    let mut req = reqwest::Client::new().request(method, url).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    read_raw(req.send().await.expect("request sent")).await
}

/// Reads a whole response as a `Raw`.
pub async fn read_raw(resp: reqwest::Response) -> Raw {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = resp.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (status, ct, json)
}

impl TestContext {
    /// A raw `application/json` POST of `body` to `path`.
    pub async fn post_json(&self, path: &str, body: impl Into<reqwest::Body>) -> Raw {
        let json = Some("application/json");
        raw(reqwest::Method::POST, &self.url(path), json, body).await
    }

    /// A raw GET of `path`.
    pub async fn get_raw(&self, path: &str) -> Raw {
        raw(reqwest::Method::GET, &self.url(path), None, "").await
    }
}

/// The contents of messages, in their order.
pub fn contents(messages: &[types::Message]) -> Vec<String> {
    messages.iter().map(|m| m.content.clone()).collect()
}

/// Asserts a raw response is the API's JSON error with `status` and `code`.
pub fn assert_error(resp: &Raw, status: u16, code: &str) {
    let (got_status, ct, body) = resp;
    assert_eq!(*got_status, status, "status; body: {body}");
    assert!(
        ct.starts_with("application/json"),
        "content type {ct:?}; body: {body}"
    );
    assert_eq!(body["error"]["code"], code, "code; body: {body}");
    assert!(
        body["error"]["message"].is_string(),
        "message; body: {body}"
    );
    assert!(
        body["error"]["timestamp"].is_string(),
        "timestamp; body: {body}"
    );
}

/// How long a test waits for an event that must come.
pub const WAIT: StdDuration = StdDuration::from_secs(10);

pub fn message(content: &str, transport: types::TransportType) -> types::SendMessageRequest {
    types::SendMessageRequest {
        content: content.to_string(),
        attachments: Vec::new(),
        metadata: Default::default(),
        transport: Some(transport),
        mode: None,
        client_message_id: None,
    }
}

pub async fn next<T: std::fmt::Debug>(events: &mut BoxedEvents<T>) -> T {
    tokio::time::timeout(WAIT, events.next())
        .await
        .expect("an event arrives in time")
        .expect("the stream goes on")
        .expect("a well-formed event")
}
