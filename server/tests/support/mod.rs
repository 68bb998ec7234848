//! What the binary's fault tests share: the real server as a child process (with its log lines, timestamped),
//! a load of creates and heartbeats over HTTP that records every acknowledged write, and a throwaway
//! PostgreSQL server the test may stop and start.

pub mod command;
// The root test suite's load (one source for both): its own fault tests use all of it, these some.
#[allow(dead_code)]
#[path = "../../../tests/faults/load.rs"]
pub mod load;
pub mod postgres;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Starting takes well under a second; this bounds a broken start, not a slow one.
pub const START_WAIT: Duration = Duration::from_secs(30);

/// A log line of the server and when this process read it.
pub type LogLine = (Instant, String);

/// The server binary, running on `database_url`, with every line it printed.
pub struct ServerProcess {
    child: Child,
    pub base_url: String,
    log: Arc<Mutex<Vec<LogLine>>>,
    /// Bumped for every line read, so that `wait_for_line` wakes to look.
    lines_read: tokio::sync::watch::Receiver<usize>,
}

impl ServerProcess {
    /// Starts the binary on a free port and waits until it listens.
    pub fn start(database_url: &str) -> Self {
        // The default log filter, as an operator gets it, in plain lines, so that the tests can find the level.
        let mut child = command::server_command("127.0.0.1", database_url)
            .env("NO_COLOR", "1")
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the server binary starts");
        let stdout = child.stdout.take().expect("stdout");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (listening, address) = mpsc::channel();
        let (read, lines_read) = tokio::sync::watch::channel(0);
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let url = rest.split_whitespace().next().unwrap_or_default();
                    let _ = listening.send(url.to_string());
                }
                lines.lock().unwrap().push((Instant::now(), line));
                read.send_modify(|n| *n += 1);
            }
        });
        let base_url = address
            .recv_timeout(START_WAIT)
            .expect("the server reports where it listens");
        Self {
            child,
            base_url,
            log,
            lines_read,
        }
    }

    /// `kill -9`: the process ends at once, wherever it was.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("the killed server is reaped");
    }

    /// The log lines read at or after `since` that contain `needle`.
    pub fn lines(&self, since: Instant, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, line)| *at >= since && line.contains(needle))
            .map(|(_, line)| line.clone())
            .collect()
    }

    /// Waits until a line containing `needle` has been printed at or after `since`, at most `limit`.
    pub async fn wait_for_line(&mut self, since: Instant, needle: &str, limit: Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(line) = self.lines(since, needle).pop() {
                return line;
            }
            if tokio::time::timeout_at(deadline, self.lines_read.changed())
                .await
                .is_err()
            {
                panic!("no log line with {needle:?} within {limit:?}");
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
