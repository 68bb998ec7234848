//! The fast lane: the requests that arrive by the thousand, answered in one step in front of the middleware
//! stack. The probes that orchestrators and load balancers poll (`GET /livez`, `GET /readyz`,
//! `GET /api/messaging/sessions/health`), the calls a live client repeats (`getSession`, `sessionHeartbeat`,
//! and `getMessages` for the latest page: without a query), and a backend's `createSession`. Each gets the same
//! body, status and headers as the operation behind it (request id, security headers, rate-limit labels), its
//! HTTP metrics, and its log line (INFO for the session calls, as in the stack; DEBUG for the probes, which
//! every replica polls every few seconds).
//!
//! The lane answers only the plain success; everything else goes through the whole stack unchanged, which
//! then answers it as always: a browser's request (it has an `Origin`, so CORS applies), one the DNS-rebinding
//! guard refuses, one without valid credentials or not covering the session (401/403), a rate-limited one (the
//! limit counts only the calls it lets through, so the stack counts it once and answers the 429), an id that
//! needs percent-decoding, a getMessages with a query (a page size or a cursor) or asking for a compressed
//! answer (`Accept-Encoding`: the stack's compression layer answers it), a create with an idempotency key or a
//! body of unstated length, and any failure of the operation (unknown or expired session, a body the contract
//! refuses, a store that cannot take writes). A failed heartbeat or create has written nothing, so the stack
//! running it again is a plain retry (a create's body, read by the lane, is handed back to it as it came); its
//! rate limit then counts the call twice, which only matters for failing calls.
//!
//! Why: each layer of the stack (request scope, error clock, host guard, CORS, compression, security headers,
//! panic catching, access control, error shape, routing, poem-openapi's extractors) is a nested future and some
//! work per request, and together they cost more than a probe or a session lookup itself.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::FutureExt;
use poem::http::{header, Method};
use poem::{Body, Endpoint, IntoResponse, Middleware, Request, Response};

use super::access::{admit, authorize, label_allowed, OperatorOnly, OwnSession};
use super::host_guard::HostGuard;
use super::json_out::JsonOut;
use super::observe::{log_line, request_id_of, X_REQUEST_ID};
use super::probes::{readiness, ProbeStatus, StoreProbe};
use super::rendered_health::RenderedHealth;
use super::rendered_pages::RenderedPages;
use super::rendered_sessions::RenderedSessions;
use super::{body, idempotency};
use crate::auth::{Access, Principal, RateDecision};
use crate::service::SessionService;

const HEALTH: &str = "/api/messaging/sessions/health";
const SESSIONS: &str = "/api/messaging/sessions/";
const CREATE: &str = "/api/messaging/sessions";

/// What the lane may answer.
#[derive(Clone, Copy)]
enum Lane<'a> {
    Liveness,
    Readiness,
    Health,
    GetSession(&'a str),
    Heartbeat(&'a str),
    Messages(&'a str),
    Create,
}

impl<'a> Lane<'a> {
    fn of(method: &Method, path: &'a str, query: Option<&str>) -> Option<Self> {
        if method == Method::POST && path == CREATE && query.is_none_or(str::is_empty) {
            return Some(Self::Create);
        }
        if method == Method::GET {
            match path {
                "/livez" => return Some(Self::Liveness),
                "/readyz" => return Some(Self::Readiness),
                HEALTH => return Some(Self::Health),
                _ => {}
            }
        }
        let rest = path.strip_prefix(SESSIONS)?;
        let (id, lane, expected) = match rest.split_once('/') {
            None => (rest, Self::GetSession(rest), Method::GET),
            Some((id, "heartbeat")) => (id, Self::Heartbeat(id), Method::POST),
            Some((id, "messages")) if query.is_none_or(str::is_empty) => {
                (id, Self::Messages(id), Method::GET)
            }
            Some(_) => return None,
        };
        let plain = !id.is_empty() && !id.contains('%');
        (plain && *method == expected).then_some(lane)
    }

    fn operation(self) -> &'static str {
        match self {
            Self::Liveness => "getLiveness",
            Self::Readiness => "getReadiness",
            Self::Health => "getSessionsHealth",
            Self::GetSession(_) => "getSession",
            Self::Heartbeat(_) => "sessionHeartbeat",
            Self::Messages(_) => "getMessages",
            Self::Create => "createSession",
        }
    }

    fn is_probe(self) -> bool {
        matches!(self, Self::Liveness | Self::Readiness | Self::Health)
    }
}

#[derive(Clone)]
pub struct FastLane {
    pub service: Arc<SessionService>,
    pub access: Arc<Access>,
    pub store: Arc<StoreProbe>,
    pub host_guard: HostGuard,
    pub health: Arc<RenderedHealth>,
    pub pages: Arc<RenderedPages>,
    pub sessions: Arc<RenderedSessions>,
}

impl<E: Endpoint<Output = Response>> Middleware<E> for FastLane {
    type Output = FastLaneEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        FastLaneEndpoint {
            inner,
            lane: self.clone(),
        }
    }
}

pub struct FastLaneEndpoint<E> {
    inner: E,
    lane: FastLane,
}

impl<E: Endpoint<Output = Response>> FastLaneEndpoint<E> {
    /// The lane's answer and who asked, or None when the stack must answer.
    async fn answer(&self, lane: Lane<'_>, req: &Request) -> Option<(Response, &'static str)> {
        match lane {
            Lane::Liveness => Some((JsonOut(ProbeStatus::ok()).into_response(), "anonymous")),
            Lane::Readiness => Some((
                readiness(&self.lane.service, &self.lane.store)
                    .await
                    .into_plain_response(),
                "anonymous",
            )),
            Lane::Health => {
                let (principal, decision) = self.admitted(req)?;
                let health = self.lane.service.health().await.ok()?;
                let mut resp = self.lane.health.answer(health);
                label_allowed(resp.headers_mut(), decision);
                Some((resp, principal.kind()))
            }
            Lane::Messages(_) if super::compress::encodes(req) => None,
            Lane::Create => None,
            Lane::GetSession(id) | Lane::Heartbeat(id) | Lane::Messages(id) => {
                let (principal, decision) = self.admitted(req)?;
                if !matches!(
                    principal,
                    Principal::Operator { .. } | Principal::Session(_)
                ) {
                    return None;
                }
                authorize::<OwnSession>(&principal, Some(id)).ok()?;
                let service = &self.lane.service;
                let mut resp = match lane {
                    Lane::Heartbeat(_) => service
                        .heartbeat(id)
                        .await
                        .ok()
                        .map(|view| self.lane.sessions.answer_renewed(view)),
                    Lane::Messages(_) => {
                        service
                            .messages(id, None, None, None)
                            .await
                            .ok()
                            .map(|page| {
                                let mut resp = self.lane.pages.answer(page);
                                super::compress::vary_on_encoding(resp.headers_mut());
                                resp
                            })
                    }
                    _ => service
                        .get(id)
                        .await
                        .ok()
                        .map(|view| self.lane.sessions.answer(view)),
                }?;
                label_allowed(resp.headers_mut(), decision);
                Some((resp, principal.kind()))
            }
        }
    }

    /// The whole stack's answer. Boxed: in place, the stack's future (every layer's state) would be part of this
    /// endpoint's, and that much memory is copied each time a request's future is made and moved, lane or not.
    fn stack(&self, req: Request) -> futures::future::BoxFuture<'_, poem::Result<Response>>
    where
        E: Sync,
    {
        Box::pin(self.inner.call(req))
    }

    /// createSession's plain case: a key's JSON body of a known length, without an `Idempotency-Key` (the stack
    /// keeps and replays answers), that decodes and creates. The body is read here; whenever the stack must
    /// answer after all, it is put back as it came (or, if reading it failed, as a body that fails the same way).
    async fn create(&self, req: &mut Request) -> Option<(Response, &'static str)> {
        if req.headers().contains_key(idempotency::HEADER) || !body::states_json_within_limit(req) {
            return None;
        }
        let (principal, decision) = self.admitted(req)?;
        authorize::<OperatorOnly>(&principal, None).ok()?;
        let bytes = match req.take_body().into_bytes_limit(body::MAX_BODY_BYTES).await {
            Ok(bytes) => bytes,
            Err(e) => {
                let failure = std::io::Error::other(e.to_string());
                req.set_body(Body::from_bytes_stream(futures::stream::once(async {
                    Err::<Bytes, _>(failure)
                })));
                return None;
            }
        };
        let created = async {
            let value = serde_json::from_slice::<serde_json::Value>(&bytes).ok()?;
            let scope = idempotency::Scope::CreateSession;
            let keyed = idempotency::request(&self.lane.access, &principal, scope, None, &value);
            if !matches!(keyed, Ok(None)) {
                return None;
            }
            let command = super::decode::create_session(value).ok()?;
            let (service, access) = (self.lane.service.clone(), self.lane.access.clone());
            super::sessions::created(service, access, command)
                .await
                .ok()
        };
        let Some(created) = created.await else {
            req.set_body(bytes);
            return None;
        };
        let mut resp = super::sessions::CreatedSession::Created(created).into_response();
        label_allowed(resp.headers_mut(), decision);
        Some((resp, principal.kind()))
    }

    /// The caller and its rate-limit decision, unless the limit refuses it (then the stack answers the 429).
    fn admitted(&self, req: &Request) -> Option<(Principal, RateDecision)> {
        let (principal, decision) = admit(&self.lane.access, req);
        (!matches!(decision, RateDecision::Limited { .. })).then_some((principal, decision))
    }
}

impl<E: Endpoint<Output = Response>> Endpoint for FastLaneEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let Some(lane) = Lane::of(req.method(), req.uri().path(), req.uri().query())
            .filter(|_| !req.headers().contains_key(header::ORIGIN))
            .filter(|_| self.lane.host_guard.allows_request(&req))
        else {
            return self.stack(req).await;
        };
        let started = Instant::now();
        let (operation, probe) = (lane.operation(), lane.is_probe());
        let answered = if matches!(lane, Lane::Create) {
            // Its own path: reading the body needs the request itself, which `lane` borrows. Boxed: a create's
            // state (the body, the store's write) would otherwise size every request's future, and each is
            // copied when poem boxes it.
            caught(Box::pin(self.create(&mut req))).await
        } else {
            caught(self.answer(lane, &req)).await
        };
        let Some((resp, principal)) = answered else {
            return self.stack(req).await;
        };
        Ok(finish(&req, (operation, probe), started, resp, principal))
    }
}

/// As the stack's panic catcher does: a panic fails this request, never the connection's task.
async fn caught(
    answer: impl std::future::Future<Output = Option<(Response, &'static str)>>,
) -> Option<(Response, &'static str)> {
    std::panic::AssertUnwindSafe(answer)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            let error = super::error::ApiError::internal(&"handler panicked");
            Some((error.into_response(), "anonymous"))
        })
}

/// The lane's answer completed as the stack completes its own: security headers, request id, log line, metrics.
/// `(operation, probe)`: the lane's operation id, and whether it is a probe (logged at DEBUG).
fn finish(
    req: &Request,
    (operation, probe): (&'static str, bool),
    started: Instant,
    mut resp: Response,
    principal: &'static str,
) -> Response {
    let id = request_id_of(req);
    super::browser::add_security_headers(resp.headers_mut(), req.uri().path().starts_with("/api/"));
    let status = resp.status().as_u16();
    let took = started.elapsed();
    if probe {
        tracing::debug!(
            request_id = id.to_str().unwrap_or_default(),
            operation,
            status,
            "probe"
        );
    } else {
        log_line(&id, None, req.method(), operation, status, took, principal);
    }
    resp.headers_mut().insert(X_REQUEST_ID, id);
    crate::metrics::http_request(operation, status, took);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lane_takes_only_plain_paths_of_its_operations() {
        let op = |m: Method, p: &str| {
            let (path, query) = p.split_once('?').map_or((p, None), |(p, q)| (p, Some(q)));
            Lane::of(&m, path, query).map(Lane::operation)
        };
        assert_eq!(op(Method::GET, "/livez"), Some("getLiveness"));
        assert_eq!(op(Method::GET, HEALTH), Some("getSessionsHealth"));
        assert_eq!(op(Method::POST, HEALTH), None);
        assert_eq!(
            op(Method::GET, "/api/messaging/sessions/abc"),
            Some("getSession")
        );
        assert_eq!(
            op(Method::POST, "/api/messaging/sessions/abc/heartbeat"),
            Some("sessionHeartbeat")
        );
        assert_eq!(
            op(Method::GET, "/api/messaging/sessions/abc/heartbeat"),
            None
        );
        assert_eq!(op(Method::DELETE, "/api/messaging/sessions/abc"), None);
        assert_eq!(op(Method::GET, "/api/messaging/sessions/a%62c"), None);
        assert_eq!(op(Method::GET, "/api/messaging/sessions/"), None);
        assert_eq!(
            op(Method::GET, "/api/messaging/sessions/abc/messages"),
            Some("getMessages")
        );
        assert_eq!(
            op(Method::GET, "/api/messaging/sessions/abc/messages?limit=5"),
            None,
            "a page size or a cursor: the stack"
        );
        assert_eq!(
            op(Method::POST, "/api/messaging/sessions/abc/messages"),
            None
        );
        assert_eq!(op(Method::HEAD, "/livez"), None);
        assert_eq!(op(Method::POST, CREATE), Some("createSession"));
        assert_eq!(op(Method::GET, CREATE), None, "listSessions: the stack");
        assert_eq!(op(Method::POST, "/api/messaging/sessions?x=1"), None);
    }
}
