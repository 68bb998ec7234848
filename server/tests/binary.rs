//! The `agent-sessions-server` binary as an operator starts it: protected mode refuses a non-loopback address
//! without an API key, explaining what to do, and starts with a key or with `--allow-anonymous`; a database path
//! it cannot use is named in the error.
//!
//! A test binary of its own (the root `tests/` drive the library): only here does cargo provide the path of the
//! binary it built.

#[path = "support/command.rs"]
mod command;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Starting takes milliseconds; this bounds a broken start, not a slow one.
const WAIT: Duration = Duration::from_secs(30);

fn server(dir: &tempfile::TempDir, host: &str, extra: &[&str], env: &[(&str, &str)]) -> Command {
    let url = format!("sqlite:{}", dir.path().join("data/s.db").display());
    let mut cmd = command::server_command(host, &url);
    cmd.args(extra)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped());
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd
}

/// Waits for the line saying where the server listens; kills the server once seen.
fn listening_line(mut child: Child) -> String {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(line);
                return;
            }
        }
    });
    let line = rx.recv_timeout(WAIT);
    let _ = child.kill();
    let _ = child.wait();
    line.expect("the server reports where it listens")
}

#[test]
fn a_public_address_without_a_key_is_refused_with_instructions() {
    let dir = tempfile::tempdir().unwrap();
    let out = server(&dir, "0.0.0.0", &[], &[]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2), "exit status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "refusing to listen on 0.0.0.0",
        "API_KEYS",
        "--allow-anonymous",
        "127.0.0.1",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
    }
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created before the refusal"
    );
    // `ALLOW_ANONYMOUS=false` is no opt-out.
    let out = server(&dir, "0.0.0.0", &[], &[("ALLOW_ANONYMOUS", "false")])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_key_or_allow_anonymous_starts_it_and_loopback_needs_neither() {
    for (host, extra, env, mode) in [
        ("0.0.0.0", vec!["--allow-anonymous"], vec![], "open"),
        ("0.0.0.0", vec![], vec![("ALLOW_ANONYMOUS", "true")], "open"),
        (
            "0.0.0.0",
            vec![],
            vec![("API_KEYS", "a-key,another")],
            "API keys required",
        ),
        (
            "0.0.0.0",
            vec![],
            vec![("ELIZA_SERVER_AUTH_TOKEN", "eliza-key")],
            "API keys required",
        ),
        ("127.0.0.1", vec![], vec![], "open"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let child = server(&dir, host, &extra, &env).spawn().expect("starts");
        let line = listening_line(child);
        assert!(line.contains(&format!("http://{host}:")), "{line}");
        assert!(line.contains(mode), "{host} {extra:?} {env:?}: {line}");
    }
}

#[test]
fn a_database_path_it_cannot_use_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the database's directory should be.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let url = format!("sqlite:{}", blocker.join("s.db").display());
    let output = command::server_command("127.0.0.1", &url)
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .stderr(Stdio::piped())
        .output()
        .expect("the server runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&blocker.display().to_string()) && stderr.contains("--database-url"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("listening on"), "{stdout}");
}
