//! What browsers need: CORS for the configured origins, and the security headers of every response.
//!
//! CORS is poem's middleware. In front of it, `OriginFilter` takes the `Origin` header off requests from origins
//! that are not allowed, so that those get no CORS headers (the browser then keeps the response from the page)
//! while the request itself is answered as any other: poem's middleware alone would refuse them with a 403, also
//! same-origin requests a browser sends with an `Origin` (the Swagger UI page at `/docs`).

use std::sync::Arc;

use poem::http::header::{self, HeaderValue};
use poem::http::Method;
use poem::middleware::{Cors, CorsEndpoint};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

/// Which origins may call the API from a browser.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// No cross-origin access (the default).
    #[default]
    None,
    /// Any origin (`*`).
    Any,
    /// These origins exactly (`https://chat.example.com`).
    List(Vec<String>),
}

impl CorsOrigins {
    /// From a setting: a comma-separated list of origins, or `*`; empty means none.
    pub fn parse(values: &[String]) -> Self {
        let origins: Vec<String> = values
            .iter()
            .flat_map(|v| v.split(','))
            .map(|o| o.trim().trim_end_matches('/').to_string())
            .filter(|o| !o.is_empty())
            .collect();
        if origins.iter().any(|o| o == "*") {
            CorsOrigins::Any
        } else if origins.is_empty() {
            CorsOrigins::None
        } else {
            CorsOrigins::List(origins)
        }
    }

    fn allows(&self, origin: &str) -> bool {
        match self {
            CorsOrigins::None => false,
            CorsOrigins::Any => true,
            CorsOrigins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }
}

/// Request headers a page may send.
const ALLOWED_HEADERS: [&str; 5] = [
    "content-type",
    "authorization",
    "x-api-key",
    "last-event-id",
    "idempotency-key",
];
/// Response headers a page may read.
const EXPOSED_HEADERS: [&str; 8] = [
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "ratelimit-policy",
    "retry-after",
    "x-request-id",
    "www-authenticate",
    "idempotent-replayed",
];

/// `inner` behind the CORS layer: poem's `Cors` for allowed origins, behind the filter that drops every other
/// `Origin`. The middleware itself echoes any origin that reaches it (never `*`, so that the answer is the same
/// whether or not a page sends credentials).
pub fn with_cors<E: Endpoint>(inner: E, origins: CorsOrigins) -> OriginFilter<CorsEndpoint<E>> {
    let cors = Cors::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers(ALLOWED_HEADERS)
        .expose_headers(EXPOSED_HEADERS)
        .max_age(600);
    OriginFilter {
        inner: cors.transform(inner),
        origins: Arc::new(origins),
    }
}

/// The `Origin` that `OriginFilter` took off a request because it is not an allowed one. The WebSocket route
/// looks at it: browsers open WebSockets from any page without CORS, so that route checks the origin itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignOrigin(pub String);

pub struct OriginFilter<E> {
    inner: E,
    origins: Arc<CorsOrigins>,
}

impl<E: Endpoint> Endpoint for OriginFilter<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let origin = req.headers().get(header::ORIGIN).cloned();
        if let Some(origin) = origin {
            let text = String::from_utf8_lossy(origin.as_bytes()).into_owned();
            if !self.origins.allows(&text) {
                req.headers_mut().remove(header::ORIGIN);
                req.extensions_mut().insert(ForeignOrigin(text));
            }
        }
        self.inner.call(req).await.map(IntoResponse::into_response)
    }
}

/// Adds the security headers to every response: no MIME sniffing, no referrer, no framing; and, on the API,
/// no caching (responses carry session data and tokens).
pub async fn security_headers<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    let api = req.uri().path().starts_with("/api/");
    let mut resp = next.call(req).await?.into_response();
    add_security_headers(resp.headers_mut(), api);
    Ok(resp)
}

/// The headers of [`security_headers`]; `api`: the response answers a path under `/api/`.
pub fn add_security_headers(headers: &mut poem::http::HeaderMap, api: bool) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if api {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
        headers
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_from_settings() {
        assert_eq!(CorsOrigins::parse(&[]), CorsOrigins::None);
        assert_eq!(CorsOrigins::parse(&[" ".into()]), CorsOrigins::None);
        assert_eq!(CorsOrigins::parse(&["*".into()]), CorsOrigins::Any);
        let list = CorsOrigins::parse(&["https://a.example, https://b.example/".into()]);
        assert!(list.allows("https://b.example"));
        assert!(!list.allows("https://c.example"));
    }
}
