//! The `agent-sessions-server` binary: parse config, open the store, create the demo agent if needed, serve.

use std::sync::Arc;

use agent_sessions_server::auth::Access;
use agent_sessions_server::clock::SystemClock;
use agent_sessions_server::config::Config;
use agent_sessions_server::service::SessionService;
use agent_sessions_server::sweeper::Sweeper;
use agent_sessions_server::{app, openapi_spec_json, serve, store};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Many small, short-lived allocations per request: mimalloc serves them from thread-local pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The log filter without `RUST_LOG`. sqlx's own warnings are left out: during a database outage its pool
/// warns once per connection it finds broken and per slow acquisition, where the store already logs the
/// outage once (and pool saturation once per burst); `RUST_LOG=info,sqlx=warn` brings them back.
const DEFAULT_LOG: &str = "info,sqlx=error";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if config.print_openapi {
        println!("{}", openapi_spec_json());
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
        )
        .init();
    // Before the store is opened, so that a bad setting (e.g. an unreadable --agent-ca-file) creates nothing.
    let service_config = config.service_config()?;

    // Bound first, so that protected mode judges the address actually listened on.
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port)).await?;
    let addr = listener.local_addr()?;
    if let Err(refusal) = protected_mode(&config, addr) {
        eprintln!("{refusal}");
        std::process::exit(2);
    }

    let store = store::open_with(&config.database_url, &config.store_options()).await?;
    let service = Arc::new(SessionService::new(
        store.clone(),
        Arc::new(SystemClock),
        service_config,
    ));
    let access = Arc::new(Access::open(config.access_settings(), &*store, service.clock()).await?);
    if let Some(agent) = service.ensure_demo_agent().await? {
        println!("Created demo echo agent: {}", agent.id);
    }
    for agent in service.list_agents().await? {
        tracing::info!(id = %agent.id, name = %agent.name, "agent available");
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sweeper = Sweeper::new(service.clone(), config.cleanup_interval()).spawn(stop_rx);

    let mode = if access.requires_credentials() {
        "API keys required"
    } else {
        "open: no API key configured"
    };
    println!(
        "agent-sessions-server listening on http://{addr} (API docs: http://{addr}/docs; {mode})"
    );
    serve(
        listener,
        app(service, access, config.http_settings()),
        shutdown_signal(),
    )
    .await?;

    let _ = stop_tx.send(true);
    let _ = sweeper.await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Redis-style protected mode: without an API key the server is open to anyone who reaches it, which is only
/// safe on a loopback address. Anywhere else it refuses to start, unless told that this is intended.
fn protected_mode(config: &Config, addr: std::net::SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() || !config.api_keys().is_empty() || config.allow_anonymous {
        return Ok(());
    }
    Err(format!(
        "agent-sessions-server: refusing to listen on {addr} without an API key: anyone who can reach this address \
         could read, send to and end every session.\n\
         \x20 Set a key:             API_KEYS=<a long random key> (or --api-key; ELIZA_SERVER_AUTH_TOKEN also works),\n\
         \x20                        then send it as X-API-KEY: <key> or Authorization: Bearer <key>\n\
         \x20 Or listen on loopback: SERVER_HOST=127.0.0.1 (or --host 127.0.0.1)\n\
         \x20 Or run open anyway:    --allow-anonymous (ALLOW_ANONYMOUS=true), e.g. behind a proxy that authenticates"
    ))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
