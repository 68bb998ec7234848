//! The terminal client's tests: the built `agent-sessions` binary against a real server, through its arguments,
//! stdin, stdout, stderr and exit code.

mod chat;
mod commands;
mod errors;
mod events;
mod support;
