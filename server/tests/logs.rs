//! What the binary writes for an operator: one JSON log line per request (`LOG_FORMAT=json`) carrying the
//! request id, route template and status but never a key or a query string; no color codes when piped; and a
//! busy port named in the failure, before anything is created.

#[path = "support/command.rs"]
mod command;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Bounds a broken start or a missing line, not a slow one.
const WAIT: Duration = Duration::from_secs(30);
const KEY: &str = "log-test-secret-key";

/// Starts the binary with these settings; returns it, its address and its output lines (stdout and stderr).
fn start(dir: &tempfile::TempDir, env: &[(&str, &str)]) -> (Child, String, mpsc::Receiver<String>) {
    let url = format!("sqlite:{}", dir.path().join("s.db").display());
    let mut cmd = command::server_command("127.0.0.1", &url);
    cmd.env("API_KEYS", KEY).stderr(Stdio::piped());
    for (name, value) in env {
        cmd.env(name, value);
    }
    let mut child = cmd.spawn().expect("starts");
    let (tx, rx) = mpsc::channel();
    for out in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let addr = loop {
        let line = rx
            .recv_timeout(WAIT)
            .expect("the server says where it listens");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    (child, addr, rx)
}

/// A GET with the API key and a request id; the status line.
fn get(addr: &str, target: &str, request_id: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connects");
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nX-API-KEY: {KEY}\r\nX-Request-Id: {request_id}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.lines().next().unwrap_or_default().to_string()
}

/// The first line containing `needle`.
fn line_with(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    loop {
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no log line contains {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn json_logs_carry_one_line_per_request_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, rx) = start(&dir, &[("LOG_FORMAT", "json"), ("RUST_LOG", "info")]);
    let status = get(
        &addr,
        "/api/messaging/sessions?limit=5&marker=query-secret",
        "log-probe-1",
    );
    assert!(status.contains("200"), "{status}");
    let line = line_with(&rx, "log-probe-1");
    stop(child);
    let record: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    let fields = &record["fields"];
    assert_eq!(fields["message"], "request", "{line}");
    assert_eq!(fields["route"], "/api/messaging/sessions", "{line}");
    assert_eq!(fields["operation"], "listSessions", "{line}");
    assert_eq!(fields["status"], 200, "{line}");
    assert_eq!(fields["method"], "GET", "{line}");
    assert_eq!(fields["principal"], "api_key", "{line}");
    assert!(fields["duration_ms"].is_number(), "{line}");
    assert_eq!(record["span"]["request_id"], "log-probe-1", "{line}");
    assert!(
        !line.contains(KEY) && !line.contains("query-secret"),
        "{line}"
    );
}

#[test]
fn text_logs_have_no_color_codes_when_piped() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, rx) = start(&dir, &[("RUST_LOG", "info")]);
    get(&addr, "/api/agents", "log-probe-2");
    let line = line_with(&rx, "log-probe-2");
    stop(child);
    assert!(!line.contains('\u{1b}'), "{line:?}");
    assert!(
        line.contains("/api/agents") && line.contains("status=200"),
        "{line}"
    );
}

#[test]
fn a_busy_port_is_named_and_nothing_is_created() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data/s.db");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-sessions-server"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--database-url")
        .arg(format!("sqlite:{}", db.display()))
        .env_remove("API_KEYS")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot listen on 127.0.0.1:{port}: address already in use"
        )) && stderr.contains("--port / SERVER_PORT"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("demo echo agent"), "{stdout}");
    assert!(
        !dir.path().join("data").exists(),
        "nothing created before the failure"
    );
    drop(taken);
}
