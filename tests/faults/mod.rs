//! Surviving faults: a database that goes away under load and comes back (PostgreSQL stopped and started, a
//! SQLite file on a full disk or made read-only). Requests fail fast with 503 meanwhile, nothing acknowledged
//! is lost, and the server recovers by itself. (`kill -9` of the server process is in
//! `server/tests/crash.rs`, which can start the real binary.)

mod immutable;
mod load;
mod postgres;
mod sqlite;
