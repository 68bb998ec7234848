//! Binding the listening socket with a backlog fit for bursts. `TcpListener::bind` (std, tokio, mio) asks for a
//! backlog of 128: a burst of more new connections than the accept loop takes in at once (a few hundred clients
//! reconnecting after a restart) overflows it, and the kernel drops their SYNs, which clients resend only after
//! a second, then three, then seven. A larger backlog also holds the connections that wait while the connection
//! cap is reached.

use std::io;

use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel may hold before they are accepted (it caps this at `net.core.somaxconn`).
pub const BACKLOG: u32 = 4096;

/// Binds `host:port` (the first address `host` resolves to) with [`BACKLOG`].
pub async fn bind(host: &str, port: u16) -> io::Result<TcpListener> {
    let addr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} resolves to no address"),
            )
        })?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Restarting must not wait for the previous process's connections in TIME_WAIT to expire.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .and_then(|()| socket.listen(BACKLOG))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {}", reason(&e))))
}

/// Why listening failed, in words (the OS error's own text is capitalised and ends in its number).
fn reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => "address already in use".to_string(),
        io::ErrorKind::AddrNotAvailable => "no such address on this machine".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    }
}
