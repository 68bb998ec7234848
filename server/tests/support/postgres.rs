//! A throwaway PostgreSQL server that a test may stop and start: `initdb` into a temp dir (in /dev/shm when
//! there is one) and `pg_ctl start` on a free port, as the `postgres` user when run as root. A keeper shell
//! whose stdin is a pipe held by this process stops the server and deletes its files when the test drops it
//! or the process ends, however it ends. (The root test suite's `tests/pg.rs` does the same for its shared
//! server; this crate cannot use that file's test-harness parts.)
//!
//! Without `initdb` the test skips, unless `AGENT_SESSIONS_REQUIRE_POSTGRES=1` (CI) makes that a failure.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};

const REQUIRE_VAR: &str = "AGENT_SESSIONS_REQUIRE_POSTGRES";

/// Starts the server, says `ready`, and on end-of-file of stdin stops it and removes its directory.
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

pub struct Postgres {
    bin: PathBuf,
    user: Option<String>,
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    _keeper: ChildStdin,
}

impl Postgres {
    /// A new server with an empty database `sessions`; None when PostgreSQL cannot be had and is not required.
    pub fn start() -> Option<Self> {
        match launch() {
            Ok(pg) => Some(pg),
            Err(why) if std::env::var(REQUIRE_VAR).as_deref() == Ok("1") => {
                panic!("{REQUIRE_VAR}=1 but no PostgreSQL for tests: {why}")
            }
            Err(why) => {
                eprintln!("no PostgreSQL for tests: {why}");
                None
            }
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/sessions", self.port)
    }

    /// `pg_ctl stop -m <mode>`, waiting until the server is gone.
    pub fn stop(&self, mode: &str) {
        self.pg_ctl(&["-m", mode, "-w", "stop"]);
    }

    /// `pg_ctl start` again, on the same port and data, waiting until it accepts connections.
    pub fn start_again(&self) {
        let log = self.dir.join("postgres.log");
        let options = options(self.port, &self.dir);
        self.pg_ctl(&[
            "-l",
            log.to_str().expect("a UTF-8 path"),
            "-w",
            "-t",
            "60",
            "-o",
            &options,
            "start",
        ]);
    }

    fn pg_ctl(&self, args: &[&str]) {
        let mut cmd = as_user(&self.user, &self.bin.join("pg_ctl"));
        output(cmd.arg("-D").arg(&self.data).args(args))
            .unwrap_or_else(|e| panic!("pg_ctl {args:?}: {e}"));
    }
}

fn options(port: u16, dir: &Path) -> String {
    format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
        dir.display()
    )
}

/// Where `initdb` on PATH really lives (with `pg_ctl` and `psql`), else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> Option<PathBuf> {
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
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn output(cmd: &mut Command) -> Result<String, String> {
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

/// The postmaster refuses to run as root: as root, run it as the `postgres` user (Debian's package makes it),
/// or a system user of its own made for the purpose.
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

fn launch() -> Result<Postgres, String> {
    let bin = bin_dir().ok_or("initdb not found on PATH or under /usr/lib/postgresql/*/bin")?;
    let user = server_user()?;
    let builder = || {
        let mut b = tempfile::Builder::new();
        b.prefix("agent-sessions-crash-pg-");
        b
    };
    let dir = builder()
        .tempdir_in("/dev/shm")
        .or_else(|_| builder().tempdir())
        .map_err(|e| format!("temp dir: {e}"))?
        // The keeper deletes it.
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
        .arg(options(port, &dir))
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the keeper shell: {e}"))?;
    let mut line = String::new();
    BufReader::new(keeper.stdout.take().ok_or("keeper stdout")?)
        .read_line(&mut line)
        .map_err(|e| format!("reading the keeper: {e}"))?;
    if line.trim() != "ready" {
        return Err(format!(
            "pg_ctl start failed: {}",
            std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default()
        ));
    }
    let pg = Postgres {
        bin: bin.clone(),
        user,
        dir,
        data,
        port,
        _keeper: keeper.stdin.take().ok_or("keeper stdin")?,
    };
    output(
        Command::new(bin.join("psql"))
            .args(["-X", "-q", "-d"])
            .arg(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
            .args(["-c", "CREATE DATABASE sessions"]),
    )?;
    Ok(pg)
}
