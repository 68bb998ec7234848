//! `--metrics-addr`: the binary serves `/metrics` on a listener of its own, public there, and not on the API's port.

#[path = "support/command.rs"]
mod command;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

/// Bounds a broken start, not a slow one.
const WAIT: Duration = Duration::from_secs(30);

/// The status line and body of a GET without credentials.
fn get(addr: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connects");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.lines().next().unwrap_or_default().to_string();
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

#[test]
fn metrics_have_their_own_public_listener() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("s.db").display());
    let mut cmd = command::server_command("127.0.0.1", &url);
    cmd.args(["--metrics-addr", "127.0.0.1:0"])
        .env("API_KEYS", "a-key")
        .env("RUST_LOG", "info")
        .env("LOG_FORMAT", "text")
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("starts");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut api, mut metrics) = (None, None);
    while api.is_none() || metrics.is_none() {
        let line = rx
            .recv_timeout(WAIT)
            .expect("the server says where it listens");
        let at = |marker: &str| {
            line.split(marker)
                .nth(1)
                .map(|rest| rest.split(['/', ' ']).next().unwrap().to_string())
        };
        if let Some(a) = at("metrics on http://") {
            metrics = Some(a);
        } else if let Some(a) = at("listening on http://") {
            api = Some(a);
        }
    }
    let (api, metrics) = (api.unwrap(), metrics.unwrap());
    let (status, body) = get(&metrics, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("agent_sessions_"), "{body}");
    let (status, _) = get(&api, "/metrics");
    assert!(
        status.contains("401"),
        "{status}: the API's port wants a key first"
    );
    let _ = child.kill();
    let _ = child.wait();
}
