//! agent-sessions-server: an elizaOS-compatible Sessions API server.
//!
//! Crate map (dependencies point downward):
//! - [`app`]: the whole endpoint: the HTTP API with Socket.IO beside it.
//! - [`api`]: HTTP only (poem-openapi handlers, wire models, `ApiError`).
//! - [`chat`]: the web chat page at `/chat` (embedded HTML, CSS and JS).
//! - [`socketio`]: Socket.IO as elizaOS clients speak it: handshake credentials, channels, replies pushed.
//! - [`service`]: `SessionService`, the one place that reads the clock and calls the store.
//! - [`domain`]: sessions, agents, timeout rules, validation; pure, no HTTP, no SQL.
//! - [`store`]: the `SessionStore` trait and its backends.
//! - [`agents`]: agent backends (echo, webhook, openai) behind the `ReplyBackend` trait, and the egress policy
//!   (secrets, hosts, reply size, CA roots) their HTTP calls follow.
//! - [`clock`]: `Clock`, `SystemClock`, `MockClock`.
//! - [`sweeper`]: the background purge of sessions past retention.
//! - [`webhooks`]: outbound webhooks: signing, and the background dispatcher of the store's delivery queue.
//! - [`outage`]: retry pacing and once-per-burst failure logs, for living through database outages.
//! - [`serve`]: connections: accept loop, cap, header and idle timeouts, bounded drain at shutdown.
//! - [`metrics`]: the Prometheus metrics: names, the process-wide recorder, one function per thing measured.
//! - [`fd_limit`]: the open-file limit, raised at start, and the connection budget it allows.
//! - [`logging`]: the log output (tracing subscriber, non-blocking writer) and the access log.
//! - [`shutdown`]: the stop signals and the last-resort exit at the shutdown's bound.
//! - [`config`]: flags and environment variables.

pub mod agents;
pub mod api;
mod app;
pub mod auth;
pub mod chat;
pub mod clock;
pub mod config;
pub mod domain;
pub mod fd_limit;
pub mod logging;
pub mod metrics;
pub mod outage;
pub mod serve;
pub mod service;
pub mod shutdown;
pub mod socketio;
pub mod store;
pub mod sweeper;
pub mod webhooks;

pub use app::app;
pub use serve::{serve, serve_with, ConnectionSettings};

/// The OpenAPI document the handlers generate, as JSON.
pub fn openapi_spec_json() -> String {
    api::generated_spec_json()
}
