//! The DNS-rebinding guard. A server without API keys on a loopback address answers whatever reaches it, and a web
//! page on any site can reach it through its visitor's browser: the site points a name of its own at 127.0.0.1
//! (DNS rebinding), and the browser then treats the server as part of the site, free to read its answers. Such
//! requests carry the site's name in `Host`, so an open loopback server answers only requests addressed to a
//! loopback name (`localhost`, `*.localhost`, a loopback address, with any port), plus names the operator lists.
//!
//! A server with keys needs no guard (a page has no key), nor does one listening beyond loopback: protected mode
//! let it start only with keys or with `--allow-anonymous`, behind a proxy that answers for the names.

use std::net::{IpAddr, SocketAddr};

use poem::http::header::HOST;
use poem::http::StatusCode;
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

use super::error::{ApiError, ErrorCode};

/// Which `Host` names the server answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HostGuard {
    /// Any name.
    #[default]
    Off,
    /// Loopback names, and these (lowercase, without port).
    LoopbackNames { extra: Vec<String> },
}

impl HostGuard {
    /// The guard of a server listening on `addr` (before knowing about keys: `app` turns it off when keys are
    /// required), with extra names the operator allows.
    pub fn for_listener(addr: SocketAddr, extra: &[String]) -> Self {
        if !addr.ip().is_loopback() {
            return Self::Off;
        }
        Self::LoopbackNames {
            extra: extra
                .iter()
                .map(|name| name.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|name| !name.is_empty())
                .collect(),
        }
    }

    /// Whether a request with this `Host` (None: none sent, as HTTP/1.0 clients may; browsers always send one)
    /// is answered.
    pub fn allows(&self, host: Option<&str>) -> bool {
        let Self::LoopbackNames { extra } = self else {
            return true;
        };
        let Some(host) = host else {
            return true;
        };
        let name = without_port(host.trim())
            .trim_end_matches('.')
            .to_ascii_lowercase();
        name == "localhost"
            || name.ends_with(".localhost")
            || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
            || extra.contains(&name)
    }

    /// The refusal for `host`.
    fn refusal(host: &str) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!(
                "Host '{host}' is not served: without an API key this server answers only requests addressed to \
                 localhost, 127.0.0.1 or [::1] (a protection against DNS rebinding). Use one of those names, list \
                 this one in --allowed-hosts (ALLOWED_HOSTS), or set API_KEYS"
            ),
        )
    }
}

/// `host:port`, `[v6]:port`, `[v6]` or a bare name/address -> the name or address.
fn without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        // A bare IPv6 address has several colons; a port follows the only one.
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

impl<E: Endpoint> Middleware<E> for HostGuard {
    type Output = Guarded<E>;

    fn transform(&self, inner: E) -> Guarded<E> {
        Guarded {
            inner,
            guard: self.clone(),
        }
    }
}

/// The middleware's endpoint: refuses, before anything else runs, a request addressed to a name not allowed.
pub struct Guarded<E> {
    inner: E,
    guard: HostGuard,
}

impl<E: Endpoint> Endpoint for Guarded<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        if self.guard != HostGuard::Off {
            let host = host_of(&req);
            if !self.guard.allows(host.as_deref()) {
                return Ok(HostGuard::refusal(&host.unwrap_or_default()).as_poem_response());
            }
        }
        self.inner.call(req).await.map(IntoResponse::into_response)
    }
}

/// The name a request is addressed to: its `Host` header, or (HTTP/2) its URI's authority.
fn host_of(req: &Request) -> Option<String> {
    match req.headers().get(HOST) {
        Some(value) => Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        None => req.uri().authority().map(|a| a.as_str().to_string()),
    }
}

impl HostGuard {
    /// Whether the guard lets `req` through (as the middleware decides).
    pub fn allows_request(&self, req: &Request) -> bool {
        *self == HostGuard::Off || self.allows(host_of(req).as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback(extra: &[&str]) -> HostGuard {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        HostGuard::for_listener("127.0.0.1:3000".parse().unwrap(), &extra)
    }

    #[test]
    fn loopback_names_pass_with_any_port() {
        let guard = loopback(&[]);
        for host in [
            "localhost",
            "localhost:3000",
            "LOCALHOST:1",
            "localhost.",
            "app.localhost:8080",
            "127.0.0.1",
            "127.0.0.1:3000",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:3000",
            "::1",
        ] {
            assert!(guard.allows(Some(host)), "{host}");
        }
        assert!(guard.allows(None), "no Host: no browser");
    }

    #[test]
    fn other_names_are_refused_unless_listed() {
        let guard = loopback(&["Proxy.Internal."]);
        for host in [
            "evil.example",
            "evil.example:3000",
            "localhost.evil.example",
            "evillocalhost",
            "10.0.0.1:3000",
            "[2001:db8::1]:3000",
            "",
        ] {
            assert!(!guard.allows(Some(host)), "{host}");
        }
        assert!(guard.allows(Some("proxy.internal:3000")));
    }

    #[test]
    fn beyond_loopback_there_is_no_guard() {
        let guard = HostGuard::for_listener("0.0.0.0:3000".parse().unwrap(), &[]);
        assert_eq!(guard, HostGuard::Off);
        assert!(guard.allows(Some("evil.example")));
    }
}
