//! Each request's identity and record, the outermost layer: its request id (the client's `X-Request-Id` when it
//! is printable ASCII of at most 128 characters, else a new UUID v4), echoed on every response; the tracing span
//! that puts the id in every log line of the request; the one access-log line; and the HTTP metrics.
//!
//! The id and the caller's kind live in a task-local for the request's duration, so that error bodies (made deep
//! inside, by any layer) carry the id and access control can say who called, with nothing allocated to pass
//! them along. poem's `RequestId` middleware neither checks the client's id nor offers it to those layers.

use std::cell::Cell;
use std::time::Instant;

use poem::http::header::HeaderName;
use poem::http::HeaderValue;
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use poem_openapi::OperationId;
use tracing::Instrument;

use crate::auth::Principal;
use crate::logging::{request_span, AccessLine};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-chosen request id kept; a longer one is replaced.
const MAX_ID_LEN: usize = 128;

struct Current {
    id: HeaderValue,
    /// `Principal::kind` of the caller, once access control has read its credentials.
    principal: Cell<&'static str>,
}

tokio::task_local! {
    static CURRENT: Current;
}

/// The id of the request being served on this task, if any.
pub fn request_id() -> Option<String> {
    CURRENT
        .try_with(|c| c.id.to_str().ok().map(str::to_string))
        .ok()
        .flatten()
}

/// Records who the request comes from, for its log line (access control calls it).
pub fn note_principal(principal: &Principal) {
    let _ = CURRENT.try_with(|c| c.principal.set(principal.kind()));
}

/// The client's id if it may be kept: printable ASCII (space included), 1 to 128 characters.
fn acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_ID_LEN && bytes.iter().all(|b| (0x20..0x7f).contains(b))
}

/// The request's id: the client's `X-Request-Id` when it may be kept, else a new one.
pub(super) fn request_id_of(req: &Request) -> HeaderValue {
    req.headers()
        .get(X_REQUEST_ID)
        .filter(|v| acceptable(v))
        .cloned()
        .unwrap_or_else(new_id)
}

fn new_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).expect("a UUID is a valid header value")
}

/// The operation a response answered: the operationId poem-openapi attached, else the fixed route served
/// beside the API, else `unmatched` (a 404). Static names only, so that metrics never get a series per id.
fn operation(resp: &Response, path: &str) -> &'static str {
    if let Some(OperationId(id)) = resp.data::<OperationId>() {
        return id;
    }
    match path {
        "/" => "root",
        "/docs" => "docs",
        "/openapi.json" => "openapi.json",
        "/openapi.yaml" => "openapi.yaml",
        p if p.starts_with(crate::socketio::PATH) => "socket.io",
        _ => "unmatched",
    }
}

/// The middleware (see the module documentation).
pub struct Observe;

impl<E: Endpoint> Middleware<E> for Observe {
    type Output = ObserveEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        // Installed before the first request, so that nothing recorded is lost to the no-op recorder.
        crate::metrics::handle();
        ObserveEndpoint { inner }
    }
}

pub struct ObserveEndpoint<E> {
    inner: E,
}

impl<E: Endpoint> Endpoint for ObserveEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let started = Instant::now();
        let id = request_id_of(&req);
        let method = req.method().clone();
        // A Uri clone shares its buffer; only the path is read, after the response, for the operation's name.
        let uri = req.uri().clone();
        let span = request_span(&id);
        let current = Current {
            id: id.clone(),
            principal: Cell::new("anonymous"),
        };
        let (result, principal) = CURRENT
            .scope(current, async {
                let result = self.inner.call(req).await;
                let principal = CURRENT.with(|c| c.principal.get());
                // An error still unanswered is made a response here, inside the scope, so its body has the id.
                (
                    result
                        .map(IntoResponse::into_response)
                        .unwrap_or_else(|e| e.into_response()),
                    principal,
                )
            })
            .instrument(span.clone())
            .await;
        let mut resp = result;
        let took = started.elapsed();
        let status = resp.status().as_u16();
        let operation = operation(&resp, uri.path());
        crate::metrics::http_request(operation, status, took);
        log_line(
            &id,
            Some(&span),
            &method,
            operation,
            status,
            took,
            principal,
        );
        resp.headers_mut().insert(X_REQUEST_ID, id);
        Ok(resp)
    }
}

/// The one access-log line of a request (never a key, token or query); `span` is the request's, when it has one.
pub(super) fn log_line(
    id: &HeaderValue,
    span: Option<&tracing::Span>,
    method: &poem::http::Method,
    operation: &'static str,
    status: u16,
    took: std::time::Duration,
    principal: &str,
) {
    let line = AccessLine {
        request_id: id,
        method: method.as_str(),
        route: super::routes::template(operation).unwrap_or(operation),
        operation,
        status,
        took,
        principal,
    };
    crate::logging::access(&line, span);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_only_when_printable_and_short() {
        assert!(acceptable(&HeaderValue::from_static("abc-123 x")));
        assert!(acceptable(
            &HeaderValue::from_str(&"a".repeat(128)).unwrap()
        ));
        assert!(!acceptable(
            &HeaderValue::from_str(&"a".repeat(129)).unwrap()
        ));
        assert!(!acceptable(&HeaderValue::from_static("")));
        assert!(!acceptable(
            &HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()
        ));
        assert!(!acceptable(&HeaderValue::from_bytes(b"a\tb").unwrap()));
        assert_eq!(new_id().len(), 36);
    }
}
