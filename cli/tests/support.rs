//! What the CLI's tests stand on: a real server started in-process on `127.0.0.1` (as its binary starts it, over
//! a temporary SQLite file, with a mock clock the tests move), and the built `agent-sessions` binary, run to its
//! end or driven through its stdin while its output is read line by line, always with a timeout.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use agent_sessions::Client;
use agent_sessions_server::api::stream_slots::{self, StreamSlots};
use agent_sessions_server::api::{CorsOrigins, HostGuard, HttpSettings, StreamSettings};
use agent_sessions_server::auth::{Access, AccessSettings};
use agent_sessions_server::clock::MockClock;
use agent_sessions_server::service::{ServiceConfig, SessionService};
use agent_sessions_server::store;
use agent_sessions_server::sweeper::Sweeper;
use agent_sessions_server::ConnectionSettings;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::oneshot;

/// How long a test waits for output that must come.
pub const WAIT: Duration = Duration::from_secs(20);

/// The id of the demo echo agent every new server creates.
pub const DEMO_AGENT: &str = "3c90c3cc-0d44-4b50-8888-8dd25736052a";

pub struct Server {
    pub url: String,
    /// The SDK, with the server's first API key if it has one: how tests check what the CLI did.
    pub client: Client,
    pub clock: Arc<MockClock>,
    service: Arc<SessionService>,
    dir: Arc<tempfile::TempDir>,
    keys: Vec<String>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// An open server (no API key).
    pub async fn start() -> Self {
        Self::with_keys(&[]).await
    }

    /// A server that requires one of these API keys.
    pub async fn with_keys(keys: &[&str]) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("a temp dir"));
        let keys = keys.iter().map(|k| k.to_string()).collect();
        Self::on(dir, Arc::new(MockClock::default()), keys, 0).await
    }

    async fn on(
        dir: Arc<tempfile::TempDir>,
        clock: Arc<MockClock>,
        keys: Vec<String>,
        port: u16,
    ) -> Self {
        let url = format!("sqlite:{}", dir.path().join("sessions.db").display());
        let store = store::open_with(&url, &store::StoreOptions::default())
            .await
            .expect("the store opens");
        let service = Arc::new(SessionService::new(
            store.clone(),
            clock.clone(),
            ServiceConfig::default(),
        ));
        let settings = AccessSettings {
            api_keys: keys.clone(),
            ..AccessSettings::default()
        };
        let access = Access::open(settings, &*store, clock.clone()).await;
        let access = Arc::new(access.expect("access control"));
        service.ensure_demo_agent().await.expect("the demo agent");
        let listener = agent_sessions_server::serve::bind("127.0.0.1", port).await;
        let listener = listener.expect("a free port");
        let local = listener.local_addr().expect("the address");
        let http = HttpSettings {
            streams: StreamSettings {
                keepalive: Duration::from_secs(15),
                slots: StreamSlots::new(
                    stream_slots::DEFAULT_PER_SESSION,
                    stream_slots::DEFAULT_TOTAL,
                ),
            },
            cors: CorsOrigins::None,
            host_guard: HostGuard::for_listener(local, &[]),
            metrics: true,
        };
        let app = agent_sessions_server::app(service.clone(), access, http);
        let (tx, rx) = oneshot::channel::<()>();
        let stopping = service.clone();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
                stopping.begin_shutdown();
            };
            let connections = ConnectionSettings::default();
            agent_sessions_server::serve_with(listener, app, shutdown, connections)
                .await
                .expect("the server runs");
            store.close().await;
        });
        let url = format!("http://{local}");
        let client = match keys.first() {
            Some(key) => Client::with_api_key(&url, key).expect("a valid key"),
            None => Client::new(&url),
        };
        Self {
            url,
            client,
            clock,
            service,
            dir,
            keys,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    /// Stops this server (its event streams end) and starts another on the same port, database and clock: a
    /// restart, as clients see it.
    pub async fn restart(mut self) -> Self {
        let port = self.url.rsplit(':').next().and_then(|p| p.parse().ok());
        let port: u16 = port.expect("the URL has a port");
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("the server stops cleanly");
        }
        let (dir, clock, keys) = (self.dir.clone(), self.clock.clone(), self.keys.clone());
        Self::on(dir, clock, keys, port).await
    }

    /// Moves the server's clock, then makes the pass that announces warnings and expiries due.
    pub async fn advance_minutes(&self, minutes: i64) {
        self.clock.advance(chrono::Duration::minutes(minutes));
        let sweeper = Sweeper::new(self.service.clone(), Duration::from_secs(60));
        let pass = sweeper.run_once(self.service.now()).await;
        pass.expect("the sweeper's pass");
    }

    /// A new session with the demo agent, through the SDK.
    pub async fn create_session(&self) -> agent_sessions::types::Session {
        let request = agent_sessions::types::CreateSessionRequest {
            agent_id: DEMO_AGENT.parse().expect("a uuid"),
            user_id: uuid::Uuid::new_v4(),
            metadata: Default::default(),
            timeout_config: None,
        };
        let session = self.client.create_session().body(request).send().await;
        session.expect("create_session").into_inner()
    }

    /// The status of `getSession` for this id (200, 404, 410...).
    pub async fn session_status(&self, id: &str) -> u16 {
        match self.client.get_session().session_id(id).send().await {
            Ok(_) => 200,
            Err(e) => e.status().expect("an HTTP answer").as_u16(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The finished run of a command.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The stdout of a run that must have succeeded.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "the command failed: {self:#?}");
        &self.stdout
    }

    /// The JSON stdout of a run that must have succeeded.
    pub fn json(&self) -> serde_json::Value {
        let stdout = self.ok();
        serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    }

    /// The stderr of a run that must have failed with `code`.
    pub fn failed(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "exit code: {self:#?}");
        assert!(self.stdout.is_empty(), "a failure prints nothing on stdout");
        &self.stderr
    }
}

/// The built `agent-sessions`, against `url`, with no credentials or settings from the environment.
pub fn command(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agent-sessions"));
    command
        .arg("--url")
        .arg(url)
        .args(args)
        .env_remove("AGENT_SESSIONS_URL")
        .env_remove("AGENT_SESSIONS_API_KEY")
        .env_remove("AGENT_SESSIONS_TOKEN")
        .kill_on_drop(true);
    command
}

/// Runs `agent-sessions --url URL ARGS...` to its end, with nothing on stdin.
pub async fn run(url: &str, args: &[&str]) -> Output {
    let output = command(url, args).stdin(Stdio::null()).output();
    let output = tokio::time::timeout(WAIT, output).await;
    let output = output.expect("the command ends in time").expect("it runs");
    Output {
        code: output.status.code().expect("an exit code"),
        stdout: String::from_utf8(output.stdout).expect("UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8"),
    }
}

/// A running `agent-sessions`: its stdin to write, its output read line by line.
pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
    /// Everything read so far, for failure messages.
    seen: Vec<String>,
}

impl Running {
    pub fn spawn(url: &str, args: &[&str]) -> Self {
        let mut command = command(url, args);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("agent-sessions starts");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        Self {
            child,
            stdin,
            stdout,
            stderr,
            seen: Vec::new(),
        }
    }

    pub async fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        let written = stdin.write_all(format!("{line}\n").as_bytes()).await;
        written.expect("the line is written");
        stdin.flush().await.expect("flushed");
    }

    /// Closes stdin: end of input, as Ctrl-D on a terminal.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next stdout line containing `needle` (earlier lines are skipped).
    pub async fn stdout_line(&mut self, needle: &str) -> String {
        self.line(needle, true).await
    }

    /// The next stderr line containing `needle`.
    pub async fn stderr_line(&mut self, needle: &str) -> String {
        self.line(needle, false).await
    }

    async fn line(&mut self, needle: &str, stdout: bool) -> String {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let line = if stdout {
                    self.stdout.next_line().await
                } else {
                    self.stderr.next_line().await
                };
                match line.expect("readable output") {
                    Some(line) => {
                        self.seen.push(line.clone());
                        if line.contains(needle) {
                            return Some(line);
                        }
                    }
                    None => return None,
                }
            }
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!("output ended without {needle:?}; seen: {:#?}", self.seen),
            Err(_) => panic!("no {needle:?} in time; seen: {:#?}", self.seen),
        }
    }

    /// Waits for the process to end (stdin closed first); its exit code and the rest of its stdout and stderr.
    pub async fn finish(mut self) -> Output {
        self.close_stdin();
        let rest = tokio::time::timeout(WAIT, async {
            let mut stdout = Vec::new();
            while let Some(line) = self.stdout.next_line().await.expect("readable") {
                stdout.push(line);
            }
            let mut stderr = Vec::new();
            while let Some(line) = self.stderr.next_line().await.expect("readable") {
                stderr.push(line);
            }
            let status = self.child.wait().await.expect("the process ends");
            (status, stdout, stderr)
        })
        .await;
        let (status, stdout, stderr) = rest.expect("the process ends in time");
        Output {
            code: status.code().expect("an exit code"),
            stdout: stdout.join("\n"),
            stderr: stderr.join("\n"),
        }
    }

    /// Sends SIGINT, as Ctrl-C on a terminal does.
    pub async fn interrupt(&self) {
        let pid = self.child.id().expect("still running").to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status().await;
        assert!(sent.expect("kill runs").success());
    }

    /// Ends a process that would go on (`events tail`).
    pub async fn kill(mut self) {
        self.child.kill().await.expect("killed");
    }
}
