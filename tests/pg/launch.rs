//! Starts a throwaway PostgreSQL server, synchronously and without the test harness, so that both test suites
//! share it: this one (`tests/pg/mod.rs`: one server per test process, and servers of one test's own) and the
//! server crate's fault tests (`server/tests/support/postgres.rs`, which includes this file by path).
//!
//! `initdb` into a temp dir (in /dev/shm when there is one) and `pg_ctl start` on a free port with fsync off,
//! run by a small keeper shell whose stdin is a pipe held by this process. When the holder drops it, or the
//! process exits however it ends, the kernel closes the pipe; the keeper reads end-of-file, stops the server
//! and deletes the temp dir. So nothing is left running or on disk after the tests, and no exit hook is needed.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};

/// Set to `1` to fail PostgreSQL tests, rather than skip them, when no server can be had.
pub const REQUIRE_VAR: &str = "AGENT_SESSIONS_REQUIRE_POSTGRES";

/// The keeper: starts the server, says `ready`, then waits for end-of-file on stdin to stop it (at once: the
/// data is thrown away) and remove its directory. It ignores the terminal's signals so that a Ctrl-C of the test
/// run still ends in that clean-up rather than killing the keeper first.
const KEEPER: &str = r#"
trap '' INT TERM HUP
pg_ctl="$1"; data="$2"; opts="$3"; dir="$4"
if "$pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t 60 -o "$opts" start >/dev/null 2>&1; then
  echo ready
else
  echo failed
  rm -rf "$dir"
  exit 1
fi
while read -r _line; do :; done
"$pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1
rm -rf "$dir"
"#;

/// A server started by `launch`, and what it takes to stop and start it again. Dropping it stops the server
/// and deletes its files.
pub struct Launched {
    bin: PathBuf,
    user: Option<String>,
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    /// Held, never written: the server lives as long as this pipe is open.
    _keeper: ChildStdin,
}

impl Launched {
    /// The URL of `database` as `user` (`postgres` is the superuser).
    pub fn url_as(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    /// `pg_ctl stop -m <mode>` (`fast`: connections are told and closed; `immediate`: every server process
    /// quits at once, as in a crash), waiting until the server is gone.
    pub fn stop(&self, mode: &str) -> Command {
        self.pg_ctl(&["-m", mode, "-w", "stop"])
    }

    /// `pg_ctl start` on the same port and data, waiting until it accepts connections.
    pub fn start_again(&self) -> Command {
        let log = self.dir.join("postgres.log");
        let log = log.to_str().expect("a UTF-8 path");
        let options = server_options(self.port, &self.dir);
        self.pg_ctl(&["-l", log, "-w", "-t", "60", "-o", &options, "start"])
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut cmd = as_user(&self.user, &self.bin.join("pg_ctl"));
        cmd.arg("-D").arg(&self.data).args(args);
        cmd
    }
}

/// The postmaster's options: this port, sockets in `dir`, loopback only, no durability (a test server).
fn server_options(port: u16, dir: &Path) -> String {
    format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c wal_level=minimal \
         -c max_wal_senders=0 -c max_connections=200",
        dir.display()
    )
}

/// The directory with `initdb`, `pg_ctl` and `psql`: where `initdb` on PATH really lives, else the newest
/// Debian `/usr/lib/postgresql/<version>/bin`.
pub fn find_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("initdb"))
            .find(|p| p.is_file())
    });
    if let Some(initdb) = on_path {
        let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        return real.parent().map(Path::to_path_buf);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Runs `cmd` to its end; its standard output, or why it failed.
pub fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `initdb` and the postmaster refuse to run as root: as root, run them as the `postgres` system user (the
/// Debian package creates it), creating a dedicated user if there is none.
fn server_user() -> Result<Option<String>, String> {
    if output(Command::new("id").arg("-u"))? != "0" {
        return Ok(None);
    }
    for user in ["postgres", "agent_sessions_pg"] {
        if output(Command::new("id").args(["-u", user])).is_ok() {
            return Ok(Some(user.to_string()));
        }
    }
    output(Command::new("useradd").args([
        "--system",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        "agent_sessions_pg",
    ]))?;
    Ok(Some("agent_sessions_pg".to_string()))
}

/// `program args...`, as `user` when one is given.
fn as_user(user: &Option<String>, program: &Path) -> Command {
    match user {
        Some(user) => {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", user, "--"]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// `initdb` into a new temp dir and start a server there, under a keeper (see `KEEPER`).
pub fn launch() -> Result<Launched, String> {
    let bin = find_bin_dir().ok_or(
        "initdb not found on PATH or under /usr/lib/postgresql/*/bin (apt-get install postgresql)",
    )?;
    let user = server_user()?;
    // In memory when there is a tmpfs: on this project's machines that makes initdb about three times and
    // CREATE DATABASE about four times faster than on disk (durability is no concern for a test server).
    let builder = || {
        let mut b = tempfile::Builder::new();
        b.prefix("agent-sessions-pg-");
        b
    };
    let dir = builder()
        .tempdir_in("/dev/shm")
        .or_else(|_| builder().tempdir())
        .map_err(|e| format!("temp dir: {e}"))?
        // The keeper deletes it once the server has stopped.
        .keep();
    if let Some(user) = &user {
        output(Command::new("chown").arg(format!("{user}:")).arg(&dir))?;
    }
    let data = dir.join("data");
    output(
        as_user(&user, &bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]),
    )
    .inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&dir);
    })?;
    // A free port now; taken by someone else before the server binds it, and the start fails: try again.
    let mut last_error = String::new();
    for _ in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("free port: {e}"))?
            .port();
        let mut keeper = as_user(&user, Path::new("/bin/sh"))
            .arg("-c")
            .arg(KEEPER)
            .arg("sh")
            .arg(bin.join("pg_ctl"))
            .arg(&data)
            .arg(server_options(port, &dir))
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting the keeper shell: {e}"))?;
        let mut line = String::new();
        let stdout = keeper.stdout.take().ok_or("keeper stdout")?;
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("reading the keeper: {e}"))?;
        let mut stdin = keeper.stdin.take().ok_or("keeper stdin")?;
        if line.trim() == "ready" {
            // Nothing is ever written: the pipe only has to stay open while the server is wanted.
            let _ = stdin.flush();
            return Ok(Launched {
                bin,
                user,
                dir,
                data,
                port,
                _keeper: stdin,
            });
        }
        let _ = keeper.wait();
        last_error = std::fs::read_to_string(dir.join("postgres.log"))
            .unwrap_or_else(|_| "pg_ctl start failed".into());
        if !data.exists() {
            break;
        }
    }
    Err(format!("pg_ctl start failed: {last_error}"))
}
