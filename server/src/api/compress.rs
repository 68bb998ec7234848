//! Response compression (gzip, br; as `Accept-Encoding` asks) of the large answers only: the documentation page,
//! the contract, and the lists (listSessions, getMessages, listAgents, listWebhooks). Everything else passes
//! untouched: small answers gain nothing, and an event stream (SSE, the WebSocket feed, Socket.IO, a send with
//! the `sse` transport) must reach the client frame by frame, not when a compressor's buffer fills.

use std::sync::Arc;

use poem::http::header::{HeaderValue, ACCEPT_ENCODING, VARY};
use poem::http::HeaderMap;
use poem::http::Method;
use poem::middleware::{Compression, CompressionEndpoint};
use poem::web::{CompressionAlgo, CompressionLevel};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

/// A middle level: the documentation page is large, and brotli's highest level would spend a second on it.
const LEVEL: CompressionLevel = CompressionLevel::Precise(4);

pub struct Compress<E: Endpoint> {
    plain: Arc<E>,
    compressed: CompressionEndpoint<Arc<E>>,
}

impl<E: Endpoint> Compress<E> {
    pub fn new(inner: E) -> Self {
        let plain = Arc::new(inner);
        let compressed = Compression::new()
            .algorithms([CompressionAlgo::GZIP, CompressionAlgo::BR])
            .with_quality(LEVEL)
            .transform(plain.clone());
        Self { plain, compressed }
    }
}

/// Whether the answer to `method` on `path` may be compressed.
fn compressible(method: &Method, path: &str) -> bool {
    if method != Method::GET {
        return false;
    }
    match path {
        "/docs"
        | "/openapi.json"
        | "/openapi.yaml"
        | "/api/messaging/sessions"
        | "/api/agents"
        | "/api/webhooks" => true,
        _ => path
            .strip_prefix("/api/messaging/sessions/")
            .and_then(|rest| rest.strip_suffix("/messages"))
            .is_some_and(|id| !id.is_empty() && !id.contains('/')),
    }
}

/// Whether this layer compresses the answer to `req`: a compressible answer that the client asks to be encoded.
pub(super) fn encodes(req: &Request) -> bool {
    compressible(req.method(), req.uri().path()) && req.headers().contains_key(ACCEPT_ENCODING)
}

/// What the answer to a compressible request carries, compressed or not: caches must keep the encodings apart.
pub(super) fn vary_on_encoding(headers: &mut HeaderMap) {
    headers.append(VARY, HeaderValue::from_static("accept-encoding"));
}

impl<E: Endpoint> Endpoint for Compress<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        if !compressible(req.method(), req.uri().path()) {
            return self.plain.call(req).await.map(IntoResponse::into_response);
        }
        // Only a request that asks for an encoding goes through the compressor (which would otherwise still
        // read a `Content-Encoding` of the request).
        let mut resp = if encodes(&req) {
            self.compressed.call(req).await?
        } else {
            self.plain.call(req).await?.into_response()
        };
        vary_on_encoding(resp.headers_mut());
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_documents_and_lists_are_compressed() {
        for path in [
            "/docs",
            "/openapi.json",
            "/openapi.yaml",
            "/api/messaging/sessions",
            "/api/agents",
            "/api/webhooks",
            "/api/messaging/sessions/abc/messages",
        ] {
            assert!(compressible(&Method::GET, path), "{path}");
        }
        for (method, path) in [
            (Method::POST, "/api/messaging/sessions/abc/messages"),
            (Method::GET, "/api/messaging/sessions/abc/events"),
            (Method::GET, "/api/messaging/sessions/abc/ws"),
            (Method::GET, "/api/messaging/sessions/abc"),
            (Method::GET, "/socket.io/"),
            (Method::GET, "/api/messaging/sessions//messages"),
            (Method::GET, "/metrics"),
        ] {
            assert!(!compressible(&method, path), "{method} {path}");
        }
    }
}
