//! Hosting socketioxide under poem. Long-polling requests go through poem's tower adapter. A websocket upgrade
//! cannot: converting poem's request back for a tower service drops hyper's upgrade handle, so the handshake
//! would never complete. So the upgrade is taken here, answered with the 101, and the upgraded connection is
//! handed to socketioxide, which accepts an already-upgraded stream with the request that opened it.

use engineioxide::service::NotFoundService;
use poem::endpoint::{BoxEndpoint, TowerCompatExt};
use poem::http::{header, HeaderValue, StatusCode};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response};
use socketioxide::service::SocketIoService;
use tower::Service;

/// The `/socket.io/` endpoint.
pub struct SocketIoEndpoint {
    polling: BoxEndpoint<'static, Response>,
    upgrades: SocketIoService<NotFoundService>,
}

impl SocketIoEndpoint {
    pub fn new(service: SocketIoService<NotFoundService>) -> Self {
        Self {
            polling: service.clone().compat().map_to_response().boxed(),
            upgrades: service,
        }
    }
}

fn is_websocket_upgrade(req: &Request) -> bool {
    let has = |name, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

/// The request that opened a socket, for socketioxide to keep as long as the socket lives. Copied, not cloned:
/// hyper's header values and URI are slices of the connection's read buffer, so a clone kept that whole buffer
/// (16 KiB) alive per socket.
fn opening_request(req: &Request) -> poem::Result<poem::http::Request<()>> {
    let uri: poem::http::Uri = req
        .uri()
        .to_string()
        .parse()
        .map_err(poem::error::BadRequest)?;
    let mut opening = poem::http::Request::builder()
        .method(req.method().clone())
        .uri(uri)
        .version(req.version());
    if let Some(headers) = opening.headers_mut() {
        headers.reserve(req.headers().len());
        for (name, value) in req.headers() {
            let mut copy =
                HeaderValue::from_bytes(value.as_bytes()).map_err(poem::error::BadRequest)?;
            copy.set_sensitive(value.is_sensitive());
            headers.append(name.clone(), copy);
        }
    }
    opening.body(()).map_err(poem::error::BadRequest)
}

impl Endpoint for SocketIoEndpoint {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        if !is_websocket_upgrade(&req) {
            return self.polling.call(req).await;
        }
        let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Ok(StatusCode::BAD_REQUEST.into_response());
        };
        let upgrade = req.take_upgrade()?;
        let opening = opening_request(&req)?;
        let mut service = self.upgrades.clone();
        tokio::spawn(async move {
            let Ok(stream) = upgrade.await else {
                return;
            };
            // A request socketioxide refuses (an unknown session id, a second websocket) closes the stream.
            if let Err(e) = service.call((stream, opening)).await {
                tracing::debug!(error = %e, "socket.io websocket refused");
            }
        });
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::UPGRADE, HeaderValue::from_static("websocket"))
            .header(header::CONNECTION, HeaderValue::from_static("Upgrade"))
            .finish();
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        Ok(response)
    }
}
