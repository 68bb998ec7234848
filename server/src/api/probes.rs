//! Handlers for orchestrators and monitoring: `GET /livez`, `GET /readyz` (public, no session activity) and
//! `GET /metrics` (Prometheus text, an operator's), plus the endpoint that serves `/metrics` alone on its own
//! listener (`--metrics-addr`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use poem::http::{Method, StatusCode};
use poem::web::Data;
use poem::{Endpoint, IntoResponse, Response};
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};

use super::access::{Authorized, OperatorOnly};
use super::error::{ApiError, ErrorCode, Failure, MetricsErrors};
use super::ApiTags;
use crate::service::SessionService;

/// How long a store probe's answer is reused: readiness is polled by every orchestrator replica and load
/// balancer, and must not become a load on the database.
const PROBE_TTL: Duration = Duration::from_secs(1);

/// The content type of Prometheus' text exposition format.
const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum ProbeState {
    Ok,
    Unavailable,
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum ProbeReason {
    /// The server is shutting down: send new requests elsewhere.
    Draining,
    /// The store cannot take writes right now.
    StoreUnavailable,
}

/// A probe's answer.
#[derive(Object, Debug, Clone)]
pub struct ProbeStatus {
    pub status: ProbeState,
    /// Why the server is not ready.
    #[oai(skip_serializing_if_is_none)]
    pub reason: Option<ProbeReason>,
}

#[derive(ApiResponse)]
pub enum Readiness {
    /// Ready: the store answers and the server is not shutting down.
    #[oai(status = 200)]
    Ready(Json<ProbeStatus>),
    /// Not ready: shutting down (`draining`) or the store cannot take writes (`store_unavailable`).
    #[oai(status = 503)]
    Unavailable(Json<ProbeStatus>),
}

#[derive(ApiResponse)]
pub enum MetricsText {
    /// Every metric, in Prometheus' text exposition format.
    #[oai(
        status = 200,
        content_type = "text/plain; version=0.0.4; charset=utf-8"
    )]
    Ok(PlainText<String>),
}

impl ProbeStatus {
    pub fn ok() -> Self {
        Self {
            status: ProbeState::Ok,
            reason: None,
        }
    }
}

/// Whether the server takes requests: not while draining, nor while the store cannot take writes.
pub async fn readiness(service: &SessionService, store: &StoreProbe) -> Readiness {
    let unavailable = |reason| {
        Readiness::Unavailable(Json(ProbeStatus {
            status: ProbeState::Unavailable,
            reason: Some(reason),
        }))
    };
    if service.stopping().is_cancelled() {
        return unavailable(ProbeReason::Draining);
    }
    if !store.writable(service).await {
        return unavailable(ProbeReason::StoreUnavailable);
    }
    Readiness::Ready(Json(ProbeStatus::ok()))
}

/// The last store probe: when, and whether the store could take writes; and whether a probe is under way.
#[derive(Default)]
pub struct StoreProbe {
    last: Mutex<Option<(Instant, bool)>>,
    probing: std::sync::atomic::AtomicBool,
}

impl StoreProbe {
    async fn writable(&self, service: &SessionService) -> bool {
        use std::sync::atomic::Ordering;
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, ok)) = last {
            // One probe at a time: while it runs (a database may take a while to answer), the others get the
            // last answer instead of each waiting for a connection of their own.
            if at.elapsed() < PROBE_TTL || self.probing.swap(true, Ordering::AcqRel) {
                return ok;
            }
        }
        // Cleared however this ends, also when the request is dropped mid-probe.
        struct Probing<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Probing<'_> {
            fn drop(&mut self) {
                self.0.store(false, std::sync::atomic::Ordering::Release);
            }
        }
        let _probing = Probing(&self.probing);
        let ok = service.store().check_writable().await.is_ok();
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), ok));
        ok
    }
}

pub struct ProbesApi {
    /// Whether `/metrics` is served here (not when it has a listener of its own).
    pub metrics: bool,
    pub store: Arc<StoreProbe>,
}

impl Default for ProbesApi {
    fn default() -> Self {
        Self {
            metrics: true,
            store: Arc::default(),
        }
    }
}

#[OpenApi(tag = "ApiTags::Operations")]
impl ProbesApi {
    /// Liveness: the process answers.
    #[oai(path = "/livez", method = "get", operation_id = "getLiveness")]
    async fn livez(&self) -> Json<ProbeStatus> {
        Json(ProbeStatus::ok())
    }

    /// Readiness: the store answers and the server is not shutting down.
    #[oai(path = "/readyz", method = "get", operation_id = "getReadiness")]
    async fn readyz(&self, service: Data<&Arc<SessionService>>) -> Readiness {
        readiness(&service, &self.store).await
    }

    /// Prometheus metrics.
    #[oai(path = "/metrics", method = "get", operation_id = "getMetrics")]
    async fn metrics(
        &self,
        _auth: Authorized<OperatorOnly>,
    ) -> Result<MetricsText, Failure<MetricsErrors>> {
        if !self.metrics {
            return Err(not_found(&Method::GET, "/metrics").into());
        }
        Ok(MetricsText::Ok(PlainText(crate::metrics::render())))
    }
}

fn not_found(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("Route {method} {path} not found"),
    )
}

/// `GET /metrics` alone, public, for a listener of its own (an address only the monitoring network reaches).
pub fn metrics_app() -> impl Endpoint<Output = Response> {
    let app = poem::endpoint::make_sync(|req| {
        let path = req.uri().path();
        if path != "/metrics" {
            return not_found(req.method(), path).into_response();
        }
        if req.method() != Method::GET {
            return ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                format!("Method {} is not allowed on {path}", req.method()),
            )
            .with_header(poem::http::header::ALLOW, "GET")
            .into_response();
        }
        Response::builder()
            .content_type(EXPOSITION)
            .body(crate::metrics::render())
    });
    poem::EndpointExt::with(app, super::observe::Observe)
}
