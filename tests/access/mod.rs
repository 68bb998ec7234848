//! Access control, end to end on real servers: the authorization matrix over every operation of `openapi.yaml`,
//! session tokens (issuing, expiry, several instances, restarts), rate limits on the `MockClock`, CORS and
//! security headers, bounds on queues and streams, and the SDK's authenticated clients.

mod browser;
mod limits;
mod matrix;
mod tokens;

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;

use crate::support::*;

/// The keys of the servers in these tests.
pub const KEY: &str = "test-key-one-0123456789";
pub const OTHER_KEY: &str = "test-key-two-9876543210";

/// One request's outcome.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the API's JSON error with this status and code.
    pub fn assert_error(&self, status: u16, code: &str, what: &str) {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "{what}: {}",
            self.body
        );
        assert!(self.body["error"]["message"].is_string(), "{what}");
        assert!(self.body["error"]["timestamp"].is_string(), "{what}");
    }
}

/// A request with the given headers (and JSON body), read whole unless it is an event stream. A GET of the
/// WebSocket route is a WebSocket handshake (admitted: 101).
pub async fn call(
    ctx: &TestContext,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Answer {
    let websocket =
        method == Method::GET && path.split('?').next().is_some_and(|p| p.ends_with("/ws"));
    let mut req = reqwest::Client::new().request(method, ctx.url(path));
    if websocket {
        req = req
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let streaming = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    // An event stream stays open: its status and headers are the answer.
    let body = if streaming {
        Value::Null
    } else {
        let text = resp.text().await.expect("body");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// A GET with the given headers.
pub async fn get_with(ctx: &TestContext, path: &str, headers: &[(&str, &str)]) -> Answer {
    call(ctx, Method::GET, path, headers, None).await
}

/// `X-API-KEY: key`.
pub fn key_header(key: &str) -> [(&'static str, String); 1] {
    [("x-api-key", key.to_string())]
}

/// `Authorization: Bearer token`.
pub fn bearer(token: &str) -> [(&'static str, String); 1] {
    [("authorization", format!("Bearer {token}"))]
}

/// Borrowed headers for `call`.
pub fn refs<'a, const N: usize>(
    headers: &'a [(&'static str, String); N],
) -> Vec<(&'static str, &'a str)> {
    headers.iter().map(|(n, v)| (*n, v.as_str())).collect()
}
