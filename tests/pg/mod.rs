//! Throwaway PostgreSQL for tests: `postgres_url()` hands each caller a fresh, empty database.
//!
//! With `AGENT_SESSIONS_TEST_POSTGRES_URL` set (a URL whose user may `CREATE DATABASE`), the databases are made
//! on that server and left there (they are named `t_<random>`). Otherwise the first call starts one server for
//! the whole test process (`launch.rs`), which lives until the process ends.
//!
//! When no server can be had, `postgres_url()` returns None and PostgreSQL tests skip, unless
//! `AGENT_SESSIONS_REQUIRE_POSTGRES=1` (CI), which turns that into a failure.
//!
//! `DedicatedServer` is a server of one test's own, started the same way, that the test may stop and start
//! again (the fault tests: a database outage under load).

pub mod launch;

use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};

use launch::{find_bin_dir, launch, output, Launched, REQUIRE_VAR};

/// An external server to make test databases on, instead of starting one.
pub const URL_VAR: &str = "AGENT_SESSIONS_TEST_POSTGRES_URL";

/// A fresh database (its URL), or None if no PostgreSQL can be had and it is not required.
pub async fn postgres_url() -> Option<String> {
    match fresh_database().await {
        Ok(url) => Some(url),
        Err(why) if std::env::var(REQUIRE_VAR).as_deref() == Ok("1") => {
            panic!("{REQUIRE_VAR}=1 but no PostgreSQL for tests: {why}")
        }
        Err(why) => {
            skipped(&why);
            None
        }
    }
}

/// Says that the calling test is skipped, where it is seen: written to stderr directly, past the harness's
/// capture of `eprintln!`, so that `cargo test` shows it next to the test's `ok`.
pub fn skipped(why: &dyn std::fmt::Display) {
    use std::io::Write;
    let test = std::thread::current()
        .name()
        .unwrap_or("a PostgreSQL test")
        .to_string();
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: no PostgreSQL for tests ({why}); {REQUIRE_VAR}=1 makes this a failure"
    );
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
            server.url_as("postgres", "postgres")
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

/// The server this process started, kept as long as the process lives.
static SERVER: OnceLock<Result<Arc<Launched>, String>> = OnceLock::new();

fn start_server() -> Result<Arc<Launched>, String> {
    launch().map(Arc::new)
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
                skipped(&why);
                None
            }
            Ok(Err(why)) => panic!("{REQUIRE_VAR}=1 but no PostgreSQL for tests: {why}"),
            Err(e) => panic!("starting PostgreSQL panicked: {e}"),
        }
    }

    /// The URL of `database` as the superuser `postgres`.
    pub fn url(&self, database: &str) -> String {
        self.launched.url_as("postgres", database)
    }

    /// The URL of `database` as `user`.
    pub fn url_as(&self, user: &str, database: &str) -> String {
        self.launched.url_as(user, database)
    }

    /// `pg_ctl stop -m <mode>` (see `Launched::stop`), waiting until the server is gone.
    pub async fn stop(&self, mode: &str) {
        run(self.launched.stop(mode)).await;
    }

    /// `pg_ctl start` on the same port and data, waiting until it accepts connections.
    pub async fn start_again(&self) {
        run(self.launched.start_again()).await;
    }
}

/// Runs a `pg_ctl` command off the runtime's threads; it must succeed.
async fn run(mut cmd: Command) {
    let what = format!("{cmd:?}");
    tokio::task::spawn_blocking(move || output(&mut cmd))
        .await
        .expect("pg_ctl runs")
        .unwrap_or_else(|e| panic!("{what}: {e}"));
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
