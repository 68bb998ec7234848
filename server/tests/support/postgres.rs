//! A throwaway PostgreSQL server that a test may stop and start, with an empty database `sessions`: the root
//! test suite's launcher (`tests/pg/launch.rs`, included by path: one source for both), made synchronous and
//! free of that suite's harness.
//!
//! Without `initdb` the test skips, unless `AGENT_SESSIONS_REQUIRE_POSTGRES=1` (CI) makes that a failure.

#[path = "../../../tests/pg/launch.rs"]
mod launch;

use std::process::Command;

use launch::{find_bin_dir, launch, output, Launched, REQUIRE_VAR};

pub struct Postgres {
    launched: Launched,
}

impl Postgres {
    /// A new server with an empty database `sessions`; None when PostgreSQL cannot be had and is not required.
    pub fn start() -> Option<Self> {
        match launch().and_then(with_database) {
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
        self.launched.url_as("postgres", "sessions")
    }

    /// `pg_ctl stop -m <mode>`, waiting until the server is gone.
    pub fn stop(&self, mode: &str) {
        let mut cmd = self.launched.stop(mode);
        output(&mut cmd).unwrap_or_else(|e| panic!("pg_ctl stop: {e}"));
    }

    /// `pg_ctl start` again, on the same port and data, waiting until it accepts connections.
    pub fn start_again(&self) {
        let mut cmd = self.launched.start_again();
        output(&mut cmd).unwrap_or_else(|e| panic!("pg_ctl start: {e}"));
    }
}

fn with_database(launched: Launched) -> Result<Postgres, String> {
    let psql = find_bin_dir().ok_or("psql not found")?.join("psql");
    let admin = launched.url_as("postgres", "postgres");
    let create = ["-X", "-q", "-d", &admin, "-c", "CREATE DATABASE sessions"];
    output(Command::new(psql).args(create))?;
    Ok(Postgres { launched })
}
