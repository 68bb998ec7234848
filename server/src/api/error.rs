//! `ApiError`, the one JSON error shape of the API, and the one table from domain and framework errors to HTTP
//! statuses and codes.
//!
//! Handlers return `Failure<S>`, where `S` lists the statuses that operation documents, so the generated spec
//! says exactly which errors each operation can answer while every error still goes through `ApiError`.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use poem::http::{HeaderName, Method, StatusCode};
use poem::{Endpoint, IntoResponse, Middleware, Response};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::{ApiResponse, Enum, Object};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::types::{JsonObject, Timestamp};
use crate::clock::{Clock, SystemClock};
use crate::domain::{ReplyFailure, SessionError};
use crate::service::WaitEnded;
use crate::store::StoreError;

tokio::task_local! {
    /// The clock of the application serving the request: error bodies are stamped with its time, so that they
    /// agree with every other time the server shows (a test's mock clock included).
    static CLOCK: Arc<dyn Clock>;
}

/// Runs one request with error timestamps read from `clock`.
pub async fn with_clock<F: Future>(clock: Arc<dyn Clock>, request: F) -> F::Output {
    CLOCK.scope(clock, request).await
}

/// The outermost layer: serves each request in the clock's scope and makes its response there, so that every
/// error body, whichever layer raised it, is stamped with the service's time.
pub struct ErrorClock(pub Arc<dyn Clock>);

impl<E: Endpoint> Middleware<E> for ErrorClock {
    type Output = ErrorClockEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        ErrorClockEndpoint {
            inner,
            clock: self.0.clone(),
        }
    }
}

pub struct ErrorClockEndpoint<E> {
    inner: E,
    clock: Arc<dyn Clock>,
}

impl<E: Endpoint> Endpoint for ErrorClockEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: poem::Request) -> poem::Result<Response> {
        with_clock(self.clock.clone(), async {
            Ok(match self.inner.call(req).await {
                Ok(resp) => resp.into_response(),
                Err(err) => err.into_response(),
            })
        })
        .await
    }
}

fn now() -> chrono::DateTime<chrono::Utc> {
    CLOCK
        .try_with(|clock| clock.now())
        .unwrap_or_else(|_| SystemClock.now())
}

/// Every error code the API answers with.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    ValidationError,
    InvalidContentType,
    SessionNotFound,
    AgentNotFound,
    WebhookNotFound,
    NotFound,
    MethodNotAllowed,
    SessionExpired,
    PayloadTooLarge,
    SessionRenewalFailed,
    RateLimitExceeded,
    Unauthorized,
    Forbidden,
    AgentError,
    AgentTimeout,
    InternalServerError,
    ServiceUnavailable,
    AgentInUse,
    QuotaExceeded,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
}

/// The body of every error response.
#[derive(Object, Debug, Clone)]
pub struct ErrorResponse {
    pub error: ErrorInfo,
}

#[derive(Object, Debug, Clone)]
pub struct ErrorInfo {
    pub code: ErrorCode,
    /// A human-readable explanation; never internal details for 5xx.
    pub message: String,
    pub timestamp: Timestamp,
    #[oai(skip_serializing_if_is_none)]
    pub details: Option<JsonObject>,
}

/// An error on its way to becoming an HTTP response.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<Map<String, Value>>,
    /// Headers the error carries (`WWW-Authenticate` on a 401, `Retry-After` on a 429 or a 503).
    pub headers: Vec<(HeaderName, String)>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn with_details(mut self, details: Value) -> Self {
        if let Value::Object(map) = details {
            self.details = Some(map);
        }
        self
    }

    /// A 500 whose body says nothing about the cause; the cause is logged under the request's id (which the
    /// body carries, as every error body does), or under a new one outside a request.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        let error = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InternalServerError,
            "Internal server error",
        );
        match super::observe::request_id() {
            // The request's span already names the id in the log line.
            Some(_) => {
                tracing::error!(error = %cause, "internal error");
                error
            }
            None => {
                let request_id = Uuid::new_v4().to_string();
                tracing::error!(%request_id, error = %cause, "internal error");
                error.with_details(serde_json::json!({ "requestId": request_id }))
            }
        }
    }

    /// A 503: the store cannot serve the request right now (unreachable, restarting, out of space, read-only). The body
    /// says only that; the cause was logged by the store, once per outage.
    pub fn unavailable() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ServiceUnavailable,
            "The database is unavailable right now; retry later",
        )
        .with_header(
            poem::http::header::RETRY_AFTER,
            UNAVAILABLE_RETRY_AFTER_SECS.to_string(),
        )
    }

    /// The code as it appears on the wire.
    pub fn code_str(&self) -> String {
        self.code
            .to_json()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The body, whose `details` carry the request's id (besides what the error put there) so that a client
    /// can quote it and an operator find the request's log lines.
    fn body(&self) -> ErrorResponse {
        let mut details = self.details.clone();
        if let Some(id) = super::observe::request_id() {
            details
                .get_or_insert_with(Map::new)
                .insert("requestId".to_string(), Value::String(id));
        }
        ErrorResponse {
            error: ErrorInfo {
                code: self.code,
                message: self.message.clone(),
                timestamp: Timestamp(now()),
                details: details.map(JsonObject::from),
            },
        }
    }
}

impl poem::error::ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn as_response(&self) -> Response {
        let body = self.body().to_json().unwrap_or(Value::Null);
        let mut builder = Response::builder()
            .status(self.status)
            .content_type("application/json; charset=utf-8");
        for (name, value) in &self.headers {
            builder = builder.header(name.clone(), value.as_str());
        }
        builder.body(serde_json::to_vec(&body).unwrap_or_default())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        poem::error::ResponseError::as_response(&self)
    }
}

/// `Retry-After` of a 503 from the store: a database restart or failover takes seconds, and a client that
/// comes back sooner only adds to the 503s.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 2;

/// The one place a domain error gets an HTTP status.
impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        let message = e.to_string();
        match e {
            SessionError::Invalid { details, .. } => {
                let err =
                    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::ValidationError, message);
                match details {
                    Some(d) => err.with_details(d),
                    None => err,
                }
            }
            SessionError::SessionNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::SessionNotFound, message)
            }
            SessionError::AgentNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::AgentNotFound, message)
            }
            SessionError::WebhookNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::WebhookNotFound, message)
            }
            SessionError::SessionExpired { id, expired_at } => ApiError::new(
                StatusCode::GONE,
                ErrorCode::SessionExpired,
                message,
            )
            .with_details(
                serde_json::json!({ "sessionId": id, "expiresAt": crate::domain::iso(expired_at) }),
            ),
            SessionError::RenewalFailed { .. } => ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::SessionRenewalFailed,
                message,
            ),
            // Logged per request at debug level only: the store logs the outage itself, once when it starts
            // and once when it ends, where a line per request would flood the log for as long as it lasts.
            SessionError::Store(StoreError::Unavailable(cause)) => {
                tracing::debug!(error = %cause, "store unavailable");
                ApiError::unavailable()
            }
            SessionError::Store(e) => ApiError::internal(&e),
            SessionError::AgentInUse { sessions, .. } => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::AgentInUse, message)
                    .with_details(serde_json::json!({ "activeSessions": sessions }))
            }
            SessionError::QuotaExceeded(_) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::QuotaExceeded,
                message,
            ),
            SessionError::TooManyPending { limit } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimitExceeded,
                message,
            )
            .with_details(serde_json::json!({ "unansweredLimit": limit }))
            .with_header(poem::http::header::RETRY_AFTER, "1"),
            SessionError::IdempotencyKeyReused { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::IdempotencyKeyReused,
                message,
            ),
            SessionError::IdempotencyKeyInUse { .. } => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::IdempotencyKeyInUse,
                message,
            )
            .with_header(poem::http::header::RETRY_AFTER, "1"),
            SessionError::IdempotencyKeyStreamed {
                user_message_id, ..
            } => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::IdempotencyKeyInUse,
                message,
            )
            .with_details(serde_json::json!({ "userMessageId": user_message_id })),
            // The health check, polled: the same reasoning as above.
            SessionError::Unavailable(cause) => {
                tracing::debug!(error = %cause, "unhealthy");
                ApiError::unavailable()
            }
        }
    }
}

/// An agent's failure to answer, as the `http` transport answers it (and the `sse` transport's `error` frame).
impl From<&ReplyFailure> for ApiError {
    fn from(e: &ReplyFailure) -> Self {
        match e {
            ReplyFailure::TimedOut { after_ms } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                ErrorCode::AgentTimeout,
                format!(
                    "The agent did not answer within {} seconds",
                    *after_ms as f64 / 1000.0
                ),
            ),
            ReplyFailure::Failed { reason } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::AgentError,
                format!("The agent failed to answer: {reason}"),
            ),
        }
    }
}

impl ApiError {
    /// Why a waiting `http` or `sse` send got no reply, when the agent is not the reason.
    ///
    /// A deleted session is a 404 `SESSION_NOT_FOUND`, not a 410: it is what every later request about the
    /// session answers (410 `SESSION_EXPIRED` is kept for sessions that timed out), so a client handles both
    /// the same way.
    pub fn wait_ended(why: WaitEnded, session_id: &str) -> Self {
        match why {
            WaitEnded::SessionDeleted => ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::SessionNotFound,
                format!("Session '{session_id}' was deleted while the message waited for its reply"),
            ),
            WaitEnded::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ServiceUnavailable,
                "The server is shutting down before the agent answered; the message is stored, and its reply \
                 will arrive on the events stream and in the history once the server (or another instance) \
                 answers it",
            ),
        }
    }
}

/// Turns any error poem or poem-openapi raised before or around a handler (routing, content type, body size,
/// parameter parsing) into the API's JSON error, so that no response is ever plain text.
pub fn from_poem_error(err: poem::Error, method: &Method, path: &str) -> ApiError {
    if let Some(api) = err.downcast_ref::<ApiError>() {
        return api.clone();
    }
    let status = err.status();
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::InvalidContentType,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimitExceeded,
        s if s.is_server_error() => return ApiError::internal(&err),
        _ => ErrorCode::ValidationError,
    };
    let message = match code {
        ErrorCode::NotFound => format!("Route {method} {path} not found"),
        ErrorCode::MethodNotAllowed => format!("Method {method} is not allowed on {path}"),
        ErrorCode::PayloadTooLarge => "Request body is too large".to_string(),
        _ => err.to_string(),
    };
    // Keep the framework's status where it is a client error, except 4xx codes that have no entry of their
    // own, which are all input problems.
    let status = if code == ErrorCode::ValidationError {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    ApiError::new(status, code, message)
}

/// The statuses an operation documents besides its success.
pub trait ErrorStatuses: Send + Sync + 'static {
    const STATUSES: &'static [u16];
}

/// An operation's error response: always an `ApiError`, documented under `S::STATUSES`.
pub struct Failure<S>(pub ApiError, PhantomData<fn() -> S>);

impl<S> From<ApiError> for Failure<S> {
    fn from(e: ApiError) -> Self {
        Failure(e, PhantomData)
    }
}

impl<S> From<SessionError> for Failure<S> {
    fn from(e: SessionError) -> Self {
        Failure(e.into(), PhantomData)
    }
}

impl<S> From<Failure<S>> for poem::Error {
    fn from(f: Failure<S>) -> Self {
        poem::Error::from(f.0)
    }
}

impl<S> IntoResponse for Failure<S> {
    fn into_response(self) -> Response {
        poem::error::ResponseError::as_response(&self.0)
    }
}

fn describe(status: u16) -> &'static str {
    match status {
        400 => "Invalid input (`VALIDATION_ERROR`, or `SESSION_RENEWAL_FAILED` for renewal)",
        401 => {
            "Missing or invalid credentials (`UNAUTHORIZED`); `WWW-Authenticate` names the scheme"
        }
        403 => "The credentials do not cover this operation or this session (`FORBIDDEN`)",
        429 => "Too many requests (`RATE_LIMIT_EXCEEDED`, `Retry-After` says when to retry), or a quota reached (`QUOTA_EXCEEDED`)",
        404 => "Not found (`SESSION_NOT_FOUND`, `AGENT_NOT_FOUND`, `WEBHOOK_NOT_FOUND`)",
        409 => {
            "The agent still has active sessions (`AGENT_IN_USE`), or the first request under this \
             `Idempotency-Key` is still in progress (`IDEMPOTENCY_KEY_IN_USE`)"
        }
        410 => "The session has expired (`SESSION_EXPIRED`)",
        422 => "This `Idempotency-Key` was used for a different request (`IDEMPOTENCY_KEY_REUSED`)",
        413 => "Request body too large (`PAYLOAD_TOO_LARGE`)",
        415 => "Content-Type is not application/json (`INVALID_CONTENT_TYPE`)",
        500 => "Internal error (`INTERNAL_SERVER_ERROR`); quote `details.requestId` when reporting it",
        502 => "The agent failed to answer (`AGENT_ERROR`); the user message stays stored",
        503 => {
            "The database is unavailable right now (`SERVICE_UNAVAILABLE`), e.g. unreachable, restarting, full \
             or read-only; `Retry-After` says when to retry"
        }
        504 => "The agent did not answer in time (`AGENT_TIMEOUT`); the user message stays stored",
        _ => "Error",
    }
}

impl<S: ErrorStatuses> ApiResponse for Failure<S> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: S::STATUSES
                .iter()
                .map(|&status| MetaResponse {
                    description: describe(status),
                    status: Some(status),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: "application/json; charset=utf-8",
                        schema: ErrorResponse::schema_ref(),
                    }],
                    headers: vec![],
                })
                .collect(),
        }
    }

    fn register(registry: &mut Registry) {
        ErrorResponse::register(registry);
    }
}

/// Declares a set of documented error statuses.
macro_rules! error_statuses {
    ($($name:ident = [$($status:literal),*];)*) => {
        $(
            pub enum $name {}
            impl ErrorStatuses for $name {
                const STATUSES: &'static [u16] = &[$($status),*];
            }
        )*
    };
}

// Every operation reads or writes the store, so every one may answer 503 while the database is away.
error_statuses! {
    HealthErrors = [429, 500, 503];
    CreateSessionErrors = [400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 503];
    ListErrors = [400, 401, 403, 429, 500, 503];
    LookupErrors = [401, 403, 404, 410, 429, 500, 503];
    DeleteErrors = [401, 403, 404, 429, 500, 503];
    RenewErrors = [400, 401, 403, 404, 410, 429, 500, 503];
    UpdateTimeoutErrors = [400, 401, 403, 404, 410, 413, 415, 429, 500, 503];
    TokenErrors = [401, 403, 404, 410, 429, 500, 503];
    CreateAgentErrors = [400, 401, 403, 413, 415, 429, 500, 503];
    AgentListErrors = [401, 403, 429, 500, 503];
    SendErrors = [400, 401, 403, 404, 409, 410, 413, 415, 422, 429, 500, 502, 503, 504];
    MessagesErrors = [400, 401, 403, 404, 410, 429, 500, 503];
    EventsErrors = [400, 401, 403, 404, 410, 429, 500, 503];
    AgentLookupErrors = [401, 403, 404, 429, 500, 503];
    DeleteAgentErrors = [401, 403, 404, 409, 429, 500, 503];
    CreateWebhookErrors = [400, 401, 403, 413, 415, 429, 500, 503];
    WebhookListErrors = [401, 403, 429, 500, 503];
    DeleteWebhookErrors = [401, 403, 404, 429, 500, 503];
    // Rendering reads no store; 404 where metrics have a listener of their own (`--metrics-addr`).
    MetricsErrors = [401, 403, 404, 429, 500];
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that cannot serve right now is a 503 with `Retry-After`, whose body says nothing of the cause;
    /// any other store failure stays a 500.
    #[test]
    fn an_unavailable_store_is_a_503_without_internal_text() {
        let cause =
            "error communicating with database: Connection refused (os error 111) at 10.0.0.7:5432";
        for e in [
            SessionError::Store(StoreError::Unavailable(cause.into())),
            SessionError::Unavailable(cause.into()),
        ] {
            let api = ApiError::from(e);
            assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(api.code_str(), "SERVICE_UNAVAILABLE");
            assert!(!api.message.contains("10.0.0.7") && !api.message.contains("refused"));
            assert_eq!(api.details, None);
            let response = poem::error::ResponseError::as_response(&api);
            assert_eq!(
                response.headers().get(poem::http::header::RETRY_AFTER),
                Some(&poem::http::HeaderValue::from_static("2"))
            );
        }
        let api = ApiError::from(SessionError::Store(StoreError::Backend(cause.into())));
        assert_eq!(api.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!api.message.contains("refused"));
    }

    /// Error bodies carry the time of the application's clock, not the wall clock.
    #[tokio::test]
    async fn error_timestamps_come_from_the_clock() {
        let at = chrono::DateTime::from_timestamp_millis(1_735_689_600_123).unwrap();
        let clock = Arc::new(crate::clock::MockClock::new(at));
        let api = ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "gone");
        let body = with_clock(clock, async { api.body() }).await;
        assert_eq!(body.error.timestamp.0, at);
    }
}
