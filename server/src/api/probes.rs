//! Handlers for orchestrators and monitoring: `GET /livez`, `GET /readyz` (public, no session activity) and
//! `GET /metrics` (Prometheus text, an operator's), plus the endpoint that serves `/metrics` alone on its own
//! listener (`--metrics-addr`).

use std::sync::Arc;
use std::time::Duration;

use poem::http::{Method, StatusCode};
use poem::web::Data;
use poem::{Endpoint, IntoResponse, Response};
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::Serialize;

use super::access::{Authorized, OperatorOnly};
use super::error::{ApiError, ErrorCode, Failure, MetricsErrors};
use super::json_out::JsonOut;
use super::ApiTags;
use crate::service::SessionService;
use crate::store::Reused;

/// How long a store probe's answer is reused: readiness is polled by every orchestrator replica and load
/// balancer, and must not become a load on the database.
const PROBE_TTL: Duration = Duration::from_secs(1);

/// The content type of Prometheus' text exposition format.
const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Enum, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum ProbeState {
    Ok,
    Unavailable,
}

#[derive(Enum, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ProbeReason {
    /// The server is shutting down: send new requests elsewhere.
    Draining,
    /// The store cannot take writes right now.
    StoreUnavailable,
}

/// A probe's answer.
#[derive(Object, Serialize, Debug, Clone)]
pub struct ProbeStatus {
    pub status: ProbeState,
    /// Why the server is not ready.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
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

impl Readiness {
    /// The same answer written with serde (`JsonOut`), without poem-openapi's JSON tree: the fast lane's.
    pub fn into_plain_response(self) -> Response {
        let (status, body) = match self {
            Readiness::Ready(Json(body)) => (StatusCode::OK, body),
            Readiness::Unavailable(Json(body)) => (StatusCode::SERVICE_UNAVAILABLE, body),
        };
        let mut resp = JsonOut(body).into_response();
        resp.set_status(status);
        resp
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

/// The last store probe's answer, reused for [`PROBE_TTL`], one probe at a time.
pub struct StoreProbe(Reused<bool>);

impl Default for StoreProbe {
    fn default() -> Self {
        Self(Reused::new(PROBE_TTL))
    }
}

impl StoreProbe {
    async fn writable(&self, service: &SessionService) -> bool {
        self.0
            .get(|| async { service.store().check_writable().await.is_ok() })
            .await
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
