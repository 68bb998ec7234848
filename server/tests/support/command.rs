//! The server binary as every test of this crate starts it (each test binary includes this file).

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_agent-sessions-server");

/// The binary on `database_url`, on a free port of `host`, printing to a pipe; none of the operator's settings
/// that would change what a test sees (keys, anonymous access, timeouts, the log filter) come through.
pub fn server_command(host: &str, database_url: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--host",
        host,
        "--port",
        "0",
        "--database-url",
        database_url,
    ]);
    for setting in [
        "API_KEYS",
        "ELIZA_SERVER_AUTH_TOKEN",
        "ALLOW_ANONYMOUS",
        "DATABASE_ACQUIRE_TIMEOUT_SECONDS",
        "SHUTDOWN_TIMEOUT_SECONDS",
        "RUST_LOG",
    ] {
        cmd.env_remove(setting);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    cmd
}
