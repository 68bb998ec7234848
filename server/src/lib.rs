//! agent-sessions-server: an elizaOS-compatible Sessions API server.
//!
//! Crate map (dependencies point downward):
//! - [`api`]: HTTP only (poem-openapi handlers, wire models, `ApiError`); [`app`] builds the endpoint.
//! - [`service`]: `SessionService`, the one place that reads the clock and calls the store.
//! - [`domain`]: sessions, agents, timeout rules, validation; pure, no HTTP, no SQL.
//! - [`store`]: the `SessionStore` trait and its backends.
//! - [`agents`]: agent backends (echo, webhook, openai) behind the `ReplyBackend` trait, and the egress policy
//!   (secrets, hosts, reply size, CA roots) their HTTP calls follow.
//! - [`clock`]: `Clock`, `SystemClock`, `MockClock`.
//! - [`sweeper`]: the background purge of sessions past retention.
//! - [`outage`]: retry pacing and once-per-burst failure logs, for living through database outages.
//! - [`config`]: flags and environment variables.

pub mod agents;
pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod domain;
pub mod outage;
pub mod service;
pub mod store;
pub mod sweeper;

use std::future::Future;
use std::time::Duration;

pub use api::app;

/// The OpenAPI document the handlers generate, as JSON.
pub fn openapi_spec_json() -> String {
    api::generated_spec_json()
}

/// Serves `app` on an already-bound listener until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: impl poem::Endpoint + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener)?;
    poem::Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app, shutdown, Some(Duration::from_secs(10)))
        .await
}
