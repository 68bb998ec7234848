//! The HTTP layer: poem-openapi handlers, wire models, `ApiError`, and `app()`, which assembles the routes, the
//! documentation endpoints and the middleware that makes every error the API's JSON shape. Never touches SQL.

pub mod access;
mod agents;
mod body;
pub mod browser;
mod compress;
pub(crate) mod decode;
pub mod error;
mod event_feed;
mod event_stream;
mod event_wire;
mod events_ws;
mod fast_lane;
pub mod host_guard;
mod idempotency;
mod json_out;
mod kept;
mod messages;
pub mod models;
pub mod observe;
pub mod probes;
mod rendered_health;
mod rendered_pages;
mod rendered_sessions;
pub mod routes;
mod sessions;
pub mod stream_slots;
pub mod types;
mod webhook_models;
mod webhooks;

use std::sync::{Arc, OnceLock};

use poem::endpoint::BoxEndpoint;
use poem::http::{Method, StatusCode};
use poem::middleware::CatchPanic;
use poem::web::Html;
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use poem_openapi::{OpenApiService, Tags};

use crate::auth::Access;
use crate::service::SessionService;
use error::{ApiError, ErrorCode};

/// The committed contract, served as the API's documentation (it carries the reference's descriptions and
/// examples; a test proves the handlers agree with it).
pub const CONTRACT_YAML: &str = include_str!("../../../openapi.yaml");

/// The `<title>` of the documentation page.
const DOCS_TITLE: &str = "<title>agent-sessions API</title>";

#[derive(Tags)]
pub enum ApiTags {
    /// Timed conversations between a user and an agent.
    Sessions,
    /// The agents sessions talk to.
    Agents,
    /// Receivers of signed session and message events.
    Webhooks,
    /// Probes for orchestrators, and metrics.
    Operations,
}

pub use browser::CorsOrigins;
pub use host_guard::HostGuard;
pub use messages::StreamSettings;

/// The HTTP side's settings.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub streams: StreamSettings,
    /// Origins that may call the API from a browser.
    pub cors: CorsOrigins,
    /// Which `Host` names an open server answers (the DNS-rebinding guard); off when keys are required.
    pub host_guard: HostGuard,
    /// Whether `GET /metrics` is served beside the API (not when it has a listener of its own).
    pub metrics: bool,
}

type Apis = (
    sessions::SessionsApi,
    messages::MessagesApi,
    events_ws::EventsWsApi,
    agents::AgentsApi,
    webhooks::WebhooksApi,
    probes::ProbesApi,
);

fn service() -> OpenApiService<Apis, ()> {
    service_with(probes::ProbesApi::default())
}

fn service_with(probes: probes::ProbesApi) -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            sessions::SessionsApi,
            messages::MessagesApi,
            events_ws::EventsWsApi,
            agents::AgentsApi,
            webhooks::WebhooksApi,
            probes,
        ),
        "agent-sessions",
        env!("CARGO_PKG_VERSION"),
    )
}

/// The spec the handlers generate (JSON), for the test that compares it with `openapi.yaml`.
pub fn generated_spec_json() -> String {
    service().spec()
}

/// `openapi.yaml` as JSON, parsed once.
pub fn contract_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let value: serde_json::Value = serde_yaml::from_str(CONTRACT_YAML)
            .expect("openapi.yaml is valid YAML (checked by tests)");
        serde_json::to_string_pretty(&value).expect("JSON values serialize")
    })
}

/// The whole HTTP application over a service. Layers, outermost first: the fast lane (the polled probes and
/// the repeated session calls, answered in one step when nothing else applies), the request's id, log line and
/// metrics,
/// the error clock's scope, the DNS-rebinding guard (open servers on loopback only), CORS (with the origin
/// filter), compression (of the documents and lists only), security headers, panic catching, access control
/// (authentication and rate limits, before any route runs), the JSON error shape, then the routes.
pub fn app(
    service_state: Arc<SessionService>,
    access: Arc<Access>,
    settings: HttpSettings,
) -> impl Endpoint {
    app_with(service_state, access, settings, None)
}

/// An endpoint served under a path prefix beside the API, with its own authentication (Socket.IO): inside the
/// host guard and CORS, outside the API's access control and error shape.
pub type Mounted = (&'static str, BoxEndpoint<'static, Response>);

/// [`app`], plus `mounted` if any.
pub fn app_with(
    service_state: Arc<SessionService>,
    access: Arc<Access>,
    settings: HttpSettings,
    mounted: Option<Mounted>,
) -> impl Endpoint {
    let host_guard = if access.requires_credentials() {
        HostGuard::Off
    } else {
        settings.host_guard.clone()
    };
    let clock = service_state.clock();
    let store_probe = Arc::new(probes::StoreProbe::default());
    let lane = fast_lane::FastLane {
        service: service_state.clone(),
        access: access.clone(),
        store: store_probe.clone(),
        host_guard: host_guard.clone(),
        health: Arc::new(rendered_health::RenderedHealth::default()),
        pages: Arc::new(rendered_pages::RenderedPages::default()),
        sessions: Arc::new(rendered_sessions::RenderedSessions::default()),
    };
    let api = service_with(probes::ProbesApi {
        metrics: settings.metrics,
        store: store_probe,
    });
    // Swagger UI embeds the spec it is given; give it the contract rather than the generated spec, and name the
    // page after the project (poem-openapi titles it "Swagger UI", which says nothing in a tab or a bookmark).
    let docs = api
        .swagger_ui_html()
        .replacen(&api.spec(), contract_json(), 1)
        .replacen("<title>Swagger UI</title>", DOCS_TITLE, 1);
    // The probes and `/metrics` are operations of the same service, outside `/api`: one endpoint, routed from
    // each of their paths too (`at` keeps the path whole, as `nest_no_strip` does).
    let api = Arc::new(poem::IntoEndpoint::into_endpoint(api));
    let routes = Route::new()
        .nest_no_strip("/api", api.clone())
        .at("/livez", api.clone())
        .at("/readyz", api.clone())
        .at("/metrics", api)
        .at(
            "/openapi.json",
            poem::endpoint::make_sync(|_| {
                Response::builder()
                    .content_type("application/json")
                    .body(contract_json())
            }),
        )
        .at(
            "/openapi.yaml",
            poem::endpoint::make_sync(|_| {
                Response::builder()
                    .content_type("application/yaml")
                    .body(CONTRACT_YAML)
            }),
        )
        // A browser pointed at the server lands on the documentation.
        .at(
            "/",
            poem::endpoint::make_sync(|_| poem::web::Redirect::temporary("/docs")),
        )
        .at(
            "/docs",
            poem::endpoint::make_sync(move |_| Html(docs.clone())),
        )
        // The web chat page: public, as the documentation is; it reaches the API with its visitor's credentials.
        .nest("/chat", crate::chat::routes())
        .data(service_state)
        .data(access.clone())
        .data(settings.streams)
        .around(json_errors)
        .with(access::AccessControl::new(access))
        .with(
            CatchPanic::new()
                .with_handler(|_| ApiError::internal(&"handler panicked").as_poem_response()),
        )
        .around(browser::security_headers);
    let routes = compress::Compress::new(routes);
    let routes = beside(routes, mounted);
    browser::with_cors(routes, settings.cors)
        .with(host_guard)
        .with(error::ErrorClock(clock))
        .with(observe::Observe)
        .map_to_response()
        .with(lane)
}

/// `routes`, with requests under the mounted endpoint's prefix handed to it instead.
fn beside(
    routes: impl Endpoint + 'static,
    mounted: Option<Mounted>,
) -> BoxEndpoint<'static, Response> {
    let routes = routes.map_to_response().boxed();
    let Some((prefix, endpoint)) = mounted else {
        return routes;
    };
    let endpoint = Arc::new(endpoint);
    routes
        .around(move |routes, req: Request| {
            let endpoint = endpoint.clone();
            async move {
                let under = req
                    .uri()
                    .path()
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
                if under {
                    endpoint.call(req).await
                } else {
                    routes.call(req).await
                }
            }
        })
        .boxed()
}

impl ApiError {
    fn as_poem_response(&self) -> Response {
        poem::error::ResponseError::as_response(self)
    }
}

/// The not-found error for the id segment of a session, agent or webhook path.
fn unknown_id_in_path(path: &str) -> Option<ApiError> {
    let (rest, code, what) = if let Some(rest) = path.strip_prefix("/api/messaging/sessions/") {
        (rest, ErrorCode::SessionNotFound, "Session")
    } else if let Some(rest) = path.strip_prefix("/api/agents/") {
        (rest, ErrorCode::AgentNotFound, "Agent")
    } else if let Some(rest) = path.strip_prefix("/api/webhooks/") {
        (rest, ErrorCode::WebhookNotFound, "Webhook")
    } else {
        return None;
    };
    let raw = rest.split('/').next().unwrap_or_default();
    let id = String::from_utf8_lossy(&percent_decode(raw)).into_owned();
    let message = match code {
        ErrorCode::AgentNotFound => format!("Agent with ID '{id}' not found"),
        _ => format!("{what} '{id}' not found"),
    };
    Some(ApiError::new(StatusCode::NOT_FOUND, code, message))
}

pub(crate) fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Makes every error leaving the application the API's JSON error.
async fn json_errors<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    let method = req.method().clone();
    // A Uri clone shares its buffer; the path is only read when there is an error to describe.
    let uri = req.uri().clone();
    match next.call(req).await {
        Ok(resp) => Ok(resp.into_response()),
        Err(err) => {
            // The operation that failed names the request in metrics and logs, as a success would.
            let operation = err.data::<poem_openapi::OperationId>().copied();
            let mut resp = json_error(err, &method, uri.path());
            if let Some(operation) = operation {
                resp.set_data(operation);
            }
            Ok(resp)
        }
    }
}

fn json_error(err: poem::Error, method: &Method, path: &str) -> Response {
    // `health` is reserved for GET only; a DELETE of it is a lookup of a session that cannot exist.
    if method == Method::DELETE
        && err.status() == StatusCode::METHOD_NOT_ALLOWED
        && path.trim_end_matches('/') == "/api/messaging/sessions/health"
    {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::SessionNotFound,
            "Session 'health' not found",
        )
        .as_poem_response();
    }
    // An id that does not even decode to UTF-8 names no session or agent: 404 like any unknown id.
    if err.is::<poem::error::ParsePathError>() {
        if let Some(resp) = unknown_id_in_path(path) {
            return resp.as_poem_response();
        }
    }
    let mut error = error::from_poem_error(err, method, path);
    if error.status == StatusCode::METHOD_NOT_ALLOWED {
        if let Some(methods) = routes::allowed(path) {
            error = error.with_header(poem::http::header::ALLOW, methods);
        }
    }
    error.as_poem_response()
}
