//! Stopping the process: the signals that start a graceful shutdown, and the last resort that ends the process
//! when the shutdown's bound passes anyway.

use std::time::Duration;

/// SIGTERM and SIGINT (Ctrl-C), listened for from the moment this is made: a signal that comes before the
/// server is serving still stops it gracefully, instead of killing it.
pub struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Completes at the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The last resort of a bounded shutdown: whatever still runs after `bound` (a stuck call, a runtime that cannot
/// stop), the process exits. A thread of its own, so that it fires even if every runtime worker is blocked.
pub fn exit_after(bound: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(bound);
        eprintln!("agent-sessions-server: shutdown did not finish within {bound:?}, exiting now");
        std::process::exit(1);
    });
}
