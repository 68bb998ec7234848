//! Access control on the wire. `AccessControl`, a middleware around every `/api` route, reads the credentials
//! (`X-API-KEY`, `Authorization: Bearer`, and `?access_token=` on the event routes only, SSE and WebSocket), makes the request's
//! `Principal`, and counts it against that principal's rate limit, before anything reads the body or the store.
//! The `Authorized<P>` extractor, each protected operation's first parameter, then admits or refuses the principal
//! for that operation (401 / 403) and declares the operation's security requirement in the spec, so that the
//! contract and the enforcement come from one place.

use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use poem::http::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use poem::http::{HeaderMap, HeaderName, Method, StatusCode};
use poem::{Endpoint, IntoResponse, Middleware, Request, RequestBody, Response};
use poem_openapi::registry::{MetaSecurityScheme, Registry};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use uuid::Uuid;

use super::error::{ApiError, ErrorCode};
use crate::auth::{Access, Credentials, Principal, RateDecision};

/// The security schemes of the contract.
pub const API_KEY: &str = "apiKey";
pub const SESSION_TOKEN: &str = "sessionToken";
pub const ACCESS_TOKEN: &str = "accessToken";

/// The realm named in `WWW-Authenticate`.
const CHALLENGE: &str = r#"Bearer realm="agent-sessions""#;

/// Which principals an operation admits.
pub trait Policy: Send + Sync + 'static {
    /// The security schemes the operation lists in the spec.
    const SCHEMES: &'static [&'static str];
    /// Whether a session token of the session named in the path is admitted.
    const SESSION_TOKENS: bool;
}

/// Agents, listing, creating sessions, changing timeouts, issuing tokens: an API key only.
pub struct OperatorOnly;
/// A session's own routes: an API key, or that session's token.
pub struct OwnSession;
/// The events feed (SSE and WebSocket): as `OwnSession`, and the token may come as `?access_token=` (browsers'
/// EventSource and WebSocket cannot set headers).
pub struct OwnSessionEvents;

impl Policy for OperatorOnly {
    const SCHEMES: &'static [&'static str] = &[API_KEY];
    const SESSION_TOKENS: bool = false;
}

impl Policy for OwnSession {
    const SCHEMES: &'static [&'static str] = &[API_KEY, SESSION_TOKEN];
    const SESSION_TOKENS: bool = true;
}

impl Policy for OwnSessionEvents {
    const SCHEMES: &'static [&'static str] = &[API_KEY, SESSION_TOKEN, ACCESS_TOKEN];
    const SESSION_TOKENS: bool = true;
}

/// The principal of a request that `P` admits. As an operation's first parameter it runs before every other.
pub struct Authorized<P> {
    pub principal: Principal,
    _policy: PhantomData<fn() -> P>,
}

fn unauthorized(message: String, invalid_token: bool) -> ApiError {
    let challenge = if invalid_token {
        format!(r#"{CHALLENGE}, error="invalid_token""#)
    } else {
        CHALLENGE.to_string()
    };
    ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
        .with_header(WWW_AUTHENTICATE, challenge)
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
}

/// Admits `principal` to an operation of policy `P` on the session named `path_session` (if any).
pub(super) fn authorize<P: Policy>(
    principal: &Principal,
    path_session: Option<&str>,
) -> Result<(), ApiError> {
    match principal {
        Principal::Operator { .. } => Ok(()),
        Principal::Session(claims) => {
            if !P::SESSION_TOKENS {
                return Err(forbidden(
                    "This operation needs an API key: a session token admits only its own session's routes",
                ));
            }
            // Compared without looking the session up, so that a token learns nothing about other sessions.
            let same = path_session
                .and_then(|id| Uuid::try_parse(id).ok())
                .is_some_and(|id| id == claims.session_id);
            if same {
                Ok(())
            } else {
                Err(forbidden("This session token is for another session"))
            }
        }
        Principal::Anonymous => Err(unauthorized(
            "Missing credentials: send an API key in X-API-KEY (or Authorization: Bearer <key>), or a session token \
             in Authorization: Bearer <token>"
                .to_string(),
            false,
        )),
        Principal::Rejected(why) => Err(unauthorized(why.message(), true)),
    }
}

impl<'a, P: Policy> ApiExtractor<'a> for Authorized<P> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        registry.create_security_scheme(
            API_KEY,
            MetaSecurityScheme {
                ty: "apiKey",
                description: Some(
                    "An operator API key (`--api-key` / `API_KEYS`): every operation. Also accepted as \
                     `Authorization: Bearer <key>`.",
                ),
                name: Some("X-API-KEY"),
                key_in: Some("header"),
                scheme: None,
                bearer_format: None,
                flows: None,
                openid_connect_url: None,
            },
        );
        registry.create_security_scheme(
            SESSION_TOKEN,
            MetaSecurityScheme {
                ty: "http",
                description: Some(
                    "A session token (`sessionToken` of createSession, or issueSessionToken): only its own \
                     session's operations.",
                ),
                name: None,
                key_in: None,
                scheme: Some("bearer"),
                bearer_format: Some("JWT"),
                flows: None,
                openid_connect_url: None,
            },
        );
        registry.create_security_scheme(
            ACCESS_TOKEN,
            MetaSecurityScheme {
                ty: "apiKey",
                description: Some(
                    "A session token as a query parameter, for browsers' EventSource and WebSocket (which \
                     cannot set headers): streamSessionEvents and streamSessionEventsWebSocket only.",
                ),
                name: Some("access_token"),
                key_in: Some("query"),
                scheme: None,
                bearer_format: None,
                flows: None,
                openid_connect_url: None,
            },
        );
    }

    fn security_schemes() -> Vec<&'static str> {
        P::SCHEMES.to_vec()
    }

    async fn from_request(
        request: &'a Request,
        _body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let principal = request
            .extensions()
            .get::<Principal>()
            .cloned()
            .unwrap_or(Principal::Anonymous);
        authorize::<P>(&principal, path_session(request.uri().path()).as_deref())?;
        Ok(Self {
            principal,
            _policy: PhantomData,
        })
    }
}

/// The middleware: authenticate, rate-limit, hand the principal to the operation, label the response.
pub struct AccessControl {
    access: Arc<Access>,
}

impl AccessControl {
    pub fn new(access: Arc<Access>) -> Self {
        Self { access }
    }
}

impl<E: Endpoint> Middleware<E> for AccessControl {
    type Output = AccessControlEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        AccessControlEndpoint {
            inner,
            access: self.access.clone(),
        }
    }
}

pub struct AccessControlEndpoint<E> {
    inner: E,
    access: Arc<Access>,
}

impl<E: Endpoint> Endpoint for AccessControlEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let path = req.uri().path();
        // Documentation, the spec and the probes are public and not counted; `/metrics` is an operator's.
        if !(path == "/api" || path.starts_with("/api/") || path == "/metrics") {
            return self.inner.call(req).await.map(IntoResponse::into_response);
        }
        let (principal, decision) = admit(&self.access, &req);
        if let RateDecision::Limited {
            limit,
            retry_after_secs,
        } = decision
        {
            crate::metrics::rate_limited(principal.kind());
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimitExceeded,
                format!(
                    "Too many requests: at most {limit} per minute for this {}; retry in {retry_after_secs} s",
                    caller_noun(&principal)
                ),
            )
            .into_response();
            label(resp.headers_mut(), limit, 0, retry_after_secs);
            insert(resp.headers_mut(), "retry-after", retry_after_secs);
            return Ok(resp);
        }
        req.extensions_mut().insert(principal);
        let mut resp = self.inner.call(req).await?.into_response();
        label_allowed(resp.headers_mut(), decision);
        Ok(resp)
    }
}

/// Who calls (noted for the request's log line) and whether the rate limit lets the call through; an allowed
/// call has taken its place in the limit's window.
pub fn admit(access: &Access, req: &Request) -> (Principal, RateDecision) {
    let path = req.uri().path();
    let principal = {
        let headers = req.headers();
        let api_key = header(headers, &HeaderName::from_static("x-api-key"));
        // An `Authorization` header that is not `Bearer <token>` is passed on whole: it then fails as a
        // credential instead of being ignored.
        let mut bearer =
            header(headers, &AUTHORIZATION).map(|value| bearer_token(value).unwrap_or(value));
        let query_token;
        if api_key.is_none() && bearer.is_none() && is_events_route(req.method(), path) {
            query_token = access_token(req.uri().query());
            bearer = query_token.as_deref();
        }
        access.authenticate(Credentials { api_key, bearer })
    };
    super::observe::note_principal(&principal);
    let ip = client_ip(req, access.trust_forwarded_for());
    // Callers without valid credentials are limited where they are served, on the public operations.
    // Elsewhere they get their 401 at once: it costs a digest, reads nothing, and a key cannot be guessed,
    // while a 429 in its place would hide why they are refused.
    let limited = match principal {
        Principal::Anonymous | Principal::Rejected(_) => {
            super::routes::is_public(req.method(), path)
        }
        _ => true,
    };
    let decision = match Access::limit_key(&principal, ip).filter(|_| limited) {
        Some(key) => access.limits().check(&key),
        None => RateDecision::Unlimited,
    };
    (principal, decision)
}

/// The `RateLimit-*` headers of a call the limit let through (none for an unlimited one).
pub fn label_allowed(headers: &mut HeaderMap, decision: RateDecision) {
    if let RateDecision::Allowed {
        limit,
        remaining,
        reset_secs,
    } = decision
    {
        label(headers, limit, remaining, reset_secs);
    }
}

/// What a rate-limited caller is, in the 429 message.
fn caller_noun(principal: &Principal) -> &'static str {
    match principal {
        Principal::Operator { key: Some(_) } => "API key",
        Principal::Session(_) => "session",
        _ => "client address",
    }
}

/// The IETF `RateLimit-*` headers (draft-ietf-httpapi-ratelimit-headers).
fn label(headers: &mut HeaderMap, limit: u32, remaining: u32, reset_secs: u64) {
    insert(headers, "ratelimit-limit", limit);
    insert(headers, "ratelimit-remaining", remaining);
    insert(headers, "ratelimit-reset", reset_secs);
    if let Ok(v) = HeaderValue::from_str(&format!("{limit};w=60")) {
        headers.insert(HeaderName::from_static("ratelimit-policy"), v);
    }
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: impl Into<u64>) {
    headers.insert(
        HeaderName::from_static(name),
        HeaderValue::from(value.into()),
    );
}

fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The token of `Authorization: Bearer <token>` (the scheme is case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// `GET /api/messaging/sessions/{sessionId}/events` and `…/ws`, the event feeds, the routes that read a token
/// from the query.
fn is_events_route(method: &Method, path: &str) -> bool {
    if method != Method::GET {
        return false;
    }
    let Some(rest) = path.strip_prefix("/api/messaging/sessions/") else {
        return false;
    };
    matches!(rest.split('/').collect::<Vec<_>>()[..], [id, "events" | "ws"] if !id.is_empty())
}

/// The session a `/api/messaging/sessions/{sessionId}/…` path names, percent-decoded as the route decodes it.
/// Read from the path itself: poem-openapi names path parameters positionally inside the router.
fn path_session(path: &str) -> Option<String> {
    let raw = path
        .strip_prefix("/api/messaging/sessions/")?
        .split('/')
        .next()?;
    Some(String::from_utf8_lossy(&super::percent_decode(raw)).into_owned())
}

fn access_token(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(name, _)| name == "access_token")
        .map(|(_, value)| value.into_owned())
        .filter(|v| !v.is_empty())
}

/// The client's address: the peer, or with `trust_forwarded_for` the last `X-Forwarded-For` entry, the one the
/// proxy in front of this server appended (earlier entries come from the client and can be anything).
fn client_ip(req: &Request, trust_forwarded_for: bool) -> IpAddr {
    if trust_forwarded_for {
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|entry| entry.trim().parse::<IpAddr>().ok())
            .next_back();
        if let Some(ip) = forwarded {
            return ip;
        }
    }
    req.remote_addr()
        .as_socket_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_and_the_events_route() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert!(is_events_route(
            &Method::GET,
            "/api/messaging/sessions/x/events"
        ));
        assert!(!is_events_route(
            &Method::POST,
            "/api/messaging/sessions/x/events"
        ));
        assert!(!is_events_route(
            &Method::GET,
            "/api/messaging/sessions/x/messages"
        ));
        assert!(is_events_route(
            &Method::GET,
            "/api/messaging/sessions/x/ws"
        ));
        assert!(!is_events_route(
            &Method::GET,
            "/api/messaging/sessions//events"
        ));
        assert_eq!(
            access_token(Some("a=1&access_token=t%2Bk")),
            Some("t+k".to_string())
        );
        assert_eq!(access_token(Some("access_token=")), None);
        let id = "3c90c3cc-0d44-4b50-8888-8dd25736052a";
        assert_eq!(
            path_session(&format!("/api/messaging/sessions/{id}/messages")).as_deref(),
            Some(id)
        );
        assert_eq!(
            path_session("/api/messaging/sessions/3c90c3cc%2D0d44-4b50-8888-8dd25736052a")
                .as_deref(),
            Some(id)
        );
        assert_eq!(path_session("/api/agents/x"), None);
    }
}
