//! Serving connections: the accept loop, the cap on open connections, each connection's header and idle clocks
//! (`timers`), and the bounded drain at shutdown; [`bind`] makes the listener.
//!
//! poem's `Server` has an idle timeout but no header-read timeout, no cap on connections, no bound on its drain
//! and spins on accept errors (`EMFILE`), so this drives the same hyper connection builder directly and hands
//! each request to the poem endpoint, as poem's server does.

mod listener;
mod timers;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use poem::endpoint::BoxEndpoint;
use poem::http::uri::Scheme;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Addr, Endpoint, EndpointExt, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use listener::{bind, BACKLOG};
use timers::{Expiry, TimedBody, Timers, Watched};

/// How connections are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// How long a client may take to send a complete request head, from opening the connection or, on a
    /// kept-alive one, from the first byte of the request. Slower clients are cut.
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request before it is closed.
    pub idle_timeout: Duration,
    /// Most connections open at once; beyond it, new ones wait in the listen backlog until one closes, and
    /// meanwhile idle connections close at once and request heads get at most a second.
    pub max_connections: usize,
    /// How long a shutdown waits for open connections to finish before it cuts them.
    pub drain_timeout: Duration,
}

/// Defaults of the settings (the binary derives `max_connections` from the open-file limit instead).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Above the 60 s idle timeout common to load balancers, which must give up a kept-alive connection first.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// Serves `app` on an already-bound listener with the default connection settings, until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: impl Endpoint + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, app, shutdown, ConnectionSettings::default()).await
}

/// Serves `app` until `shutdown` completes; then stops accepting, lets every connection finish its requests
/// (closing it after), and cuts those still open after `drain_timeout`.
///
/// Long responses (event streams, waiting sends) are ended by the application at shutdown, not here: the drain
/// only waits for them.
pub async fn serve_with(
    listener: TcpListener,
    app: impl Endpoint + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
    settings: ConnectionSettings,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let app: Arc<BoxEndpoint<'static, Response>> = Arc::new(app.map_to_response().boxed());
    let settings = Arc::new(settings);
    let permits = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    let cut = CancellationToken::new();
    // Whether the cap was reached and said so, so that it is logged once per episode, not per connection.
    let mut full = false;
    // True while a newcomer waits for a place: idle connections then give way (see `Timers::expired`).
    let (crowding, crowded) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                full = false;
                crowding.send_if_modified(|crowded| std::mem::replace(crowded, false));
                permit
            }
            Err(_) => {
                if !std::mem::replace(&mut full, true) {
                    tracing::warn!(
                        max_connections = settings.max_connections,
                        "connection limit reached: new connections wait until one closes, idle ones close"
                    );
                }
                crowding.send_if_modified(|crowded| !std::mem::replace(crowded, true));
                tokio::select! {
                    _ = &mut shutdown => break,
                    permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                }
            }
        };
        let (socket, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors or memory: accepting again at once would spin. Connections that
                    // close meanwhile free what the next accept needs.
                    tracing::warn!(error = %e, "accepting a connection failed; retrying in 100 ms");
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        connections.spawn(connection(Connection {
            socket,
            local,
            remote,
            app: app.clone(),
            settings: settings.clone(),
            crowded: crowded.clone(),
            closing: closing.clone(),
            cut: cut.clone(),
            permit,
        }));
    }

    // New connections are refused from here on.
    drop(listener);
    closing.cancel();
    connections.close();
    let open = connections.len();
    if open > 0 {
        tracing::info!(
            open,
            "waiting up to {:?} for open connections to finish",
            settings.drain_timeout
        );
    }
    if tokio::time::timeout(settings.drain_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the drain timeout: cutting them"
        );
        cut.cancel();
        connections.wait().await;
    }
    Ok(())
}

/// Errors of one connection that leave the listener fine.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted
    )
}

struct Connection {
    socket: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    app: Arc<BoxEndpoint<'static, Response>>,
    settings: Arc<ConnectionSettings>,
    /// Whether newcomers wait for a place.
    crowded: watch::Receiver<bool>,
    /// Shutdown: finish the requests in flight, then close.
    closing: CancellationToken,
    /// The drain timed out: drop everything now.
    cut: CancellationToken,
    /// This connection's place under `max_connections`, given back when its socket closes.
    permit: OwnedSemaphorePermit,
}

async fn connection(mut c: Connection) {
    // Replies and event frames are small writes that must leave at once, not wait for the previous one's ACK.
    let _ = c.socket.set_nodelay(true);
    let timers = Timers::new(c.settings.header_read_timeout, c.settings.idle_timeout);
    let local = LocalAddr(Addr::SocketAddr(c.local));
    let remote = RemoteAddr(Addr::SocketAddr(c.remote));
    let service = {
        let timers = timers.clone();
        let app = c.app.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let in_flight = timers.request_started();
            let app = app.clone();
            let request = poem::Request::from((req, local.clone(), remote.clone(), Scheme::HTTP));
            async move {
                let response: hyper::Response<_> = app.get_response(request).await.into();
                Ok::<_, Infallible>(response.map(|body| TimedBody::new(body, in_flight)))
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Head and body flattened into one buffer and one `send`, as poem's own server writes them (its socket
    // wrapper is not vectored): the responses are small, and the copy costs no more than a vectored write.
    builder.http1().writev(false);
    // poem's settings for HTTP/2 (cleartext, with prior knowledge), kept as they were.
    builder
        .http2()
        .max_pending_accept_reset_streams(20)
        .max_header_list_size(16384);
    let io = TokioIo::new(Watched::new(c.socket, timers.clone(), c.permit));
    // With upgrades: the events feed's WebSocket route and Socket.IO. An upgraded connection leaves this task (and the drain,
    // which waits only for HTTP connections) with its socket; the feed itself ends at shutdown.
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut finishing = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(remote = %c.remote, error = %e, "connection ended with an error");
                }
                return;
            }
            expiry = timers.expired(&mut c.crowded), if !finishing => match expiry {
                Expiry::Header => {
                    tracing::debug!(remote = %c.remote, "no complete request head in time: connection cut");
                    return;
                }
                Expiry::Idle => {
                    conn.as_mut().graceful_shutdown();
                    finishing = true;
                }
            },
            _ = c.closing.cancelled(), if !finishing => {
                conn.as_mut().graceful_shutdown();
                finishing = true;
            }
            _ = c.cut.cancelled() => return,
        }
    }
}
