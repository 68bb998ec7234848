//! The whole endpoint the server serves: the HTTP API, with Socket.IO at `/socket.io/` beside it.

use std::sync::Arc;

use poem::{Endpoint, EndpointExt};

use crate::api::{self, HttpSettings};
use crate::auth::Access;
use crate::service::SessionService;
use crate::socketio;

/// The HTTP API over `service` and, beside it, the Socket.IO server that pushes its sessions' replies.
pub fn app(
    service: Arc<SessionService>,
    access: Arc<Access>,
    settings: HttpSettings,
) -> impl Endpoint {
    let (sockets, _io) = socketio::server(service.clone(), access.clone());
    let mounted = (socketio::PATH, sockets.map_to_response().boxed());
    api::app_with(service, access, settings, Some(mounted))
}
