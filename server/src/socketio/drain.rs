//! Socket.IO at shutdown: every connected client is told that the server is stopping (`serverShutdown`), then
//! the connections are closed at the transport, which `socket.io-client` answers by reconnecting (a
//! namespace-level disconnect would tell it not to).

use socketioxide::SocketIo;
use tokio_util::sync::CancellationToken;

use super::wire::ShutdownNotice;

/// Drains `io` once `stopping` is cancelled. Needs a Tokio runtime to watch from; without one (an app built only
/// to describe itself), there is nothing to drain.
pub fn on_stop(io: SocketIo, stopping: CancellationToken) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        stopping.cancelled().await;
        let notice = ShutdownNotice {
            reason: "server shutting down",
            reconnect: true,
        };
        if let Err(e) = io.emit("serverShutdown", &notice).await {
            tracing::debug!(error = %e, "serverShutdown did not reach every socket");
        }
        io.close().await;
    });
}
