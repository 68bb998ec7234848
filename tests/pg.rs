//! Throwaway PostgreSQL for tests: `postgres_url()` hands each caller a fresh, empty database.
//!
//! With `AGENT_SESSIONS_TEST_POSTGRES_URL` set (a URL whose user may `CREATE DATABASE`), the databases are made
//! on that server and left there (they are named `t_<random>`). Otherwise the first call starts one server for
//! the whole test process: `initdb` into a temp dir (in /dev/shm when there is one) and `pg_ctl start` on a
//! free port with fsync off, run by a small keeper shell whose stdin is a pipe held by this process. When the
//! process exits, however it ends, the kernel closes the pipe; the keeper reads end-of-file, stops the server
//! (`pg_ctl stop -m fast`) and deletes the temp dir. So nothing is left running or on disk after `cargo test`,
//! and no exit hook is needed.
//!
//! When no server can be had, `postgres_url()` returns None and PostgreSQL tests skip, unless
//! `AGENT_SESSIONS_REQUIRE_POSTGRES=1` (CI), which turns that into a failure.
//!
//! `DedicatedServer` is a server of one test's own, started the same way, that the test may stop and start
//! again (the fault tests: a database outage under load).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, OnceLock};

/// An external server to make test databases on, instead of starting one.
pub const URL_VAR: &str = "AGENT_SESSIONS_TEST_POSTGRES_URL";
/// Set to `1` to fail PostgreSQL tests, rather than skip them, when no server can be had.
pub const REQUIRE_VAR: &str = "AGENT_SESSIONS_REQUIRE_POSTGRES";

/// A fresh database (its URL), or None if no PostgreSQL can be had and it is not required.
pub async fn postgres_url() -> Option<String> {
    match fresh_database().await {
        Ok(url) => Some(url),
        Err(why) if std::env::var(REQUIRE_VAR).as_deref() == Ok("1") => {
            panic!("{REQUIRE_VAR}=1 but no PostgreSQL for tests: {why}")
        }
        Err(why) => {
            eprintln!("no PostgreSQL for tests: {why}");
            None
        }
    }
}

/// Runs `sql` with psql on the database `url` names; returns what it printed (unaligned, tuples only).
pub async fn psql(url: &str, sql: &str) -> Result<String, String> {
    let bin = find_bin_dir().ok_or("psql not found")?.join("psql");
    let out = tokio::process::Command::new(&bin)
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "psql failed on `{sql}`: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

async fn fresh_database() -> Result<String, String> {
    let admin_url = match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => url,
        _ => {
            let server = tokio::task::spawn_blocking(|| SERVER.get_or_init(start_server).clone())
                .await
                .map_err(|e| format!("starting PostgreSQL panicked: {e}"))??;
            server.url("postgres")
        }
    };
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    psql(&admin_url, &format!("CREATE DATABASE {name}")).await?;
    with_database(&admin_url, &name)
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> Result<String, String> {
    let scheme_end = url.find("://").ok_or_else(|| format!("not a URL: {url}"))? + 3;
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let query = rest[authority_end..]
        .find('?')
        .map(|i| &rest[authority_end + i..])
        .unwrap_or("");
    Ok(format!(
        "{}{}/{name}{query}",
        &url[..scheme_end],
        &rest[..authority_end]
    ))
}

/// The server this process started; its keeper's stdin lives as long as the process.
#[derive(Clone)]
struct Server {
    port: u16,
    _keeper: Arc<ChildStdin>,
}

impl Server {
    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

/// The directory with `initdb`, `pg_ctl` and `psql`: where `initdb` on PATH really lives, else the newest
/// Debian `/usr/lib/postgresql/<version>/bin`.
fn find_bin_dir() -> Option<PathBuf> {
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

/// The keeper: starts the server, says `ready`, then waits for end-of-file on stdin (this process has
/// exited, or dropped its `DedicatedServer`) to stop it and remove its directory. It ignores the terminal's
/// signals so that a Ctrl-C of the test run still ends in that clean-up rather than killing the keeper first.
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
"$pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1
rm -rf "$dir"
"#;

/// The postmaster's options: this port, sockets in `dir`, loopback only, no durability (a test server).
fn server_options(port: u16, dir: &Path) -> String {
    format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c wal_level=minimal \
         -c max_wal_senders=0 -c max_connections=200",
        dir.display()
    )
}

fn start_server() -> Result<Server, String> {
    let launched = launch()?;
    Ok(Server {
        port: launched.port,
        _keeper: Arc::new(launched.keeper),
    })
}

/// A server started by `launch`, and what it takes to stop and start it again.
struct Launched {
    bin: PathBuf,
    user: Option<String>,
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    keeper: ChildStdin,
}

/// `initdb` into a new temp dir and start a server there, under a keeper (see `KEEPER`).
fn launch() -> Result<Launched, String> {
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
            // Nothing is ever written: the pipe only has to stay open while this process lives.
            let _ = stdin.flush();
            return Ok(Launched {
                bin,
                user,
                dir,
                data,
                port,
                keeper: stdin,
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

/// A PostgreSQL server of one test's own, which it may stop and start again (same port, same data). Dropping
/// it stops the server and deletes its files (its keeper sees end-of-file).
pub struct DedicatedServer {
    launched: Launched,
}

impl DedicatedServer {
    /// A new server; None if PostgreSQL cannot be had and is not required (as `postgres_url`).
    pub async fn start() -> Option<Self> {
        match tokio::task::spawn_blocking(launch).await {
            Ok(Ok(launched)) => Some(Self { launched }),
            Ok(Err(why)) if std::env::var(REQUIRE_VAR).as_deref() != Ok("1") => {
                eprintln!("no PostgreSQL for tests: {why}");
                None
            }
            Ok(Err(why)) => panic!("{REQUIRE_VAR}=1 but no PostgreSQL for tests: {why}"),
            Err(e) => panic!("starting PostgreSQL panicked: {e}"),
        }
    }

    /// The URL of `database` as the superuser `postgres`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}",
            self.launched.port
        )
    }

    /// The URL of `database` as `user`.
    pub fn url_as(&self, user: &str, database: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{}/{database}",
            self.launched.port
        )
    }

    /// `pg_ctl stop -m <mode>` (`fast`: connections are told and closed; `immediate`: every server process
    /// quits at once, as in a crash), waiting until the server is gone.
    pub async fn stop(&self, mode: &str) {
        self.pg_ctl(&["-m", mode, "-w", "stop"]).await;
    }

    /// `pg_ctl start` on the same port and data, waiting until it accepts connections.
    pub async fn start_again(&self) {
        let log = self.launched.dir.join("postgres.log");
        let options = server_options(self.launched.port, &self.launched.dir);
        self.pg_ctl(&[
            "-l",
            log.to_str().expect("a UTF-8 path"),
            "-w",
            "-t",
            "60",
            "-o",
            &options,
            "start",
        ])
        .await;
    }

    async fn pg_ctl(&self, args: &[&str]) {
        let l = &self.launched;
        let mut cmd = as_user(&l.user, &l.bin.join("pg_ctl"));
        cmd.arg("-D").arg(&l.data).args(args);
        tokio::task::spawn_blocking(move || output(&mut cmd))
            .await
            .expect("pg_ctl runs")
            .unwrap_or_else(|e| panic!("pg_ctl {args:?}: {e}"));
    }
}

#[tokio::test]
async fn databases_are_fresh_and_distinct() {
    let Some(a) = postgres_url().await else {
        eprintln!("skipping PostgreSQL: no server");
        return;
    };
    let b = postgres_url().await.expect("a second database");
    assert_ne!(a, b);
    assert_eq!(
        psql(
            &a,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )
        .await,
        Ok("0".to_string())
    );
    assert_eq!(
        psql(&b, "SHOW synchronous_commit").await,
        Ok("on".to_string())
    );
}

#[test]
fn database_names_are_replaced_in_urls() {
    assert_eq!(
        with_database("postgres://u:p@h:5/db?sslmode=disable", "t_1").as_deref(),
        Ok("postgres://u:p@h:5/t_1?sslmode=disable")
    );
    assert_eq!(
        with_database("postgresql://h", "t_1").as_deref(),
        Ok("postgresql://h/t_1")
    );
    assert_eq!(
        with_database("postgres://h?x=1", "t_1").as_deref(),
        Ok("postgres://h/t_1?x=1")
    );
}
