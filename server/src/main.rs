//! The `agent-sessions-server` binary: parse config, open the store, create the demo agent if needed, serve.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use agent_sessions_server::api::probes::metrics_app;
use agent_sessions_server::auth::Access;
use agent_sessions_server::clock::SystemClock;
use agent_sessions_server::config::{shutdown_reserve, Config};
use agent_sessions_server::service::SessionService;
use agent_sessions_server::shutdown::{exit_after, StopSignals};
use agent_sessions_server::sweeper::Sweeper;
use agent_sessions_server::webhooks::{Dispatcher, WebhookSettings};
use agent_sessions_server::{app, fd_limit, openapi_spec_json, serve, serve_with, store};
use clap::Parser;

/// Many small, short-lived allocations per request: mimalloc serves them from thread-local pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long the runtime may take to stop once serving is done.
const RUNTIME_STOP: Duration = Duration::from_millis(200);

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if config.print_openapi {
        println!("{}", openapi_spec_json());
        return Ok(());
    }
    // Kept to the end of `main`: dropping it writes the lines still queued.
    let _log_writer = agent_sessions_server::logging::init(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(run(config));
    // Work still blocked somewhere (a call into a database that stopped answering) must not hold the exit up.
    runtime.shutdown_timeout(RUNTIME_STOP);
    outcome
}

async fn run(config: Config) -> anyhow::Result<()> {
    // Before the store is opened, so that a bad setting (e.g. an unreadable --agent-ca-file) creates nothing.
    let service_config = config.service_config()?;
    let open_files = match fd_limit::raise() {
        Ok(limit) => {
            if limit.now > limit.was {
                tracing::info!(
                    was = limit.was,
                    now = limit.now,
                    "raised the open-file limit to its hard limit"
                );
            } else {
                tracing::info!(limit = limit.now, hard = limit.hard, "open-file limit");
            }
            Some(limit.now)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read or raise the open-file limit");
            None
        }
    };
    let fitted = config.fit(open_files);
    for lowered in &fitted.lowered {
        tracing::warn!("{lowered}");
    }

    // Bound first, so that protected mode judges the address actually listened on, and so that a busy port
    // stops the server before it creates anything.
    let listener = serve::bind(&config.host, config.port)
        .await
        .map_err(|e| listen_failed(e, "--port / SERVER_PORT"))?;
    let metrics_listener = match &config.metrics_addr {
        Some(at) => Some(
            serve::bind(&at.host, at.port)
                .await
                .map_err(|e| listen_failed(e, "--metrics-addr / METRICS_ADDR"))?,
        ),
        None => None,
    };
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

    if let Some(listener) = metrics_listener {
        let at = listener.local_addr()?;
        let stopping = service.stopping().clone();
        tokio::spawn(serve(listener, metrics_app(), async move {
            stopping.cancelled().await
        }));
        tracing::info!("metrics on http://{at}/metrics");
    }

    let mut signals = StopSignals::install()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sweeper = Sweeper::new(service.clone(), config.cleanup_interval()).spawn(stop_rx.clone());
    let dispatcher = Dispatcher::new(service.clone(), WebhookSettings::default()).spawn(stop_rx);
    service.warm_up_health();

    let mode = if access.requires_credentials() {
        "API keys required"
    } else {
        "open: no API key configured"
    };
    let connections = config.connection_settings(fitted.max_connections);
    tracing::info!(
        max_connections = connections.max_connections,
        max_streams = fitted.max_streams,
        header_read_timeout = ?connections.header_read_timeout,
        idle_timeout = ?connections.idle_timeout,
        shutdown_timeout = ?config.shutdown_timeout(),
        "connection limits"
    );
    println!(
        "agent-sessions-server listening on http://{addr} (API docs: http://{addr}/docs; {mode})"
    );
    let bound = config.shutdown_timeout();
    let signalled = Arc::new(OnceLock::new());
    let shutdown = {
        let service = service.clone();
        let signalled = signalled.clone();
        async move {
            signals.recv().await;
            let _ = signalled.set(Instant::now());
            tracing::info!("shutting down within {bound:?}");
            exit_after(bound);
            tokio::spawn(async move {
                signals.recv().await;
                eprintln!("agent-sessions-server: second signal, exiting now");
                std::process::exit(1);
            });
            service.begin_shutdown();
        }
    };
    let http = config.http_settings(addr, fitted.max_streams);
    serve_with(listener, app(service, access, http), shutdown, connections).await?;

    // What is left of the bound after the drain (at least the reserve), for the background tasks and the store,
    // less a margin for the runtime's own stop below.
    let signalled = signalled.get().copied().unwrap_or_else(Instant::now);
    let margin = (RUNTIME_STOP + Duration::from_millis(100)).min(shutdown_reserve(bound) / 2);
    let deadline = signalled + bound - margin;
    let _ = stop_tx.send(true);
    let sweeper_abort = sweeper.abort_handle();
    if tokio::time::timeout_at(deadline.into(), sweeper)
        .await
        .is_err()
    {
        tracing::warn!("the sweeper did not stop in time: abandoned");
        sweeper_abort.abort();
    }
    // The dispatcher stopped claiming when the shutdown began; what it still sends finishes here, or keeps its
    // lease and is sent again later (by this server after a restart, or by another instance).
    let dispatcher_abort = dispatcher.abort_handle();
    if tokio::time::timeout_at(deadline.into(), dispatcher)
        .await
        .is_err()
    {
        tracing::warn!("webhook deliveries still in flight at the shutdown bound: abandoned");
        dispatcher_abort.abort();
    }
    if tokio::time::timeout_at(deadline.into(), store.close())
        .await
        .is_err()
    {
        tracing::warn!("the store did not close in time: abandoned");
    }
    tracing::info!(took = ?signalled.elapsed(), "stopped");
    Ok(())
}

/// A listener that could not be made, with a hint when the port is taken.
fn listen_failed(e: std::io::Error, setting: &str) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        anyhow::anyhow!("{e} (is another server running? choose another with {setting})")
    } else {
        anyhow::anyhow!(e)
    }
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
