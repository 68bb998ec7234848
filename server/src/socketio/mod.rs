//! Socket.IO, as elizaOS 1.x clients speak it (Engine.IO v4 / Socket.IO v5 at `/socket.io/`, long-polling and
//! websocket): the handshake's credentials (`handshake`), joins and sends (`channels`), agent replies and
//! session events pushed to each session's channel (`bridge`), their wire shapes (`wire`), the hosting of
//! socketioxide under poem (`upgrade`), and the goodbye at shutdown (`drain`).

mod bridge;
mod channels;
mod drain;
mod handshake;
mod upgrade;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use socketioxide::handler::ConnectHandler;
use socketioxide::SocketIo;

use crate::auth::Access;
use crate::service::SessionService;
use bridge::Bridge;
pub use upgrade::SocketIoEndpoint;

/// Where Engine.IO listens, as every Socket.IO client expects by default.
pub const PATH: &str = "/socket.io";

/// The reference's heartbeat and payload limits.
const PING_INTERVAL: Duration = Duration::from_secs(25);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
const MAX_PAYLOAD: u64 = 1_000_000;

/// What a connected socket may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every channel (an API key, or any client of a server without keys).
    Any,
    /// The channel of this session only (a session token).
    Session(uuid::Uuid),
}

/// What the Socket.IO handlers share: the service they act through, who may connect, and the channels watched.
pub struct Realtime {
    service: Arc<SessionService>,
    access: Arc<Access>,
    bridge: Bridge,
}

/// The Socket.IO server over `service`: its endpoint (to serve at [`PATH`]) and its handle.
pub fn server(service: Arc<SessionService>, access: Arc<Access>) -> (SocketIoEndpoint, SocketIo) {
    let stopping = service.stopping().clone();
    let realtime = Arc::new(Realtime {
        service,
        access,
        bridge: Bridge::default(),
    });
    let (svc, io) = SocketIo::builder()
        .req_path(PATH)
        .ping_interval(PING_INTERVAL)
        .ping_timeout(PING_TIMEOUT)
        .max_payload(MAX_PAYLOAD)
        .with_state(realtime)
        .build_svc();
    io.ns("/", handshake::on_connect.with(handshake::authenticate));
    drain::on_stop(io.clone(), stopping);
    (SocketIoEndpoint::new(svc), io)
}
