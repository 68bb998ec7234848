//! `ApiError`, the one JSON error shape of the API, and the one table from domain and framework errors to HTTP
//! statuses and codes.
//!
//! Handlers return `Failure<S>`, where `S` lists the statuses that operation documents, so the generated spec
//! says exactly which errors each operation can answer while every error still goes through `ApiError`.

use std::marker::PhantomData;

use poem::http::{HeaderName, Method, StatusCode};
use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::{ApiResponse, Enum, Object};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::types::{JsonObject, Timestamp};
use crate::clock::{Clock, SystemClock};
use crate::domain::SessionError;

/// Every error code the API answers with.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    ValidationError,
    InvalidContentType,
    SessionNotFound,
    AgentNotFound,
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
    /// Headers the error carries (`WWW-Authenticate` on a 401, `Retry-After` on a 429).
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

    /// A 500 whose body says nothing about the cause; the cause is logged under the returned request id.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        let request_id = Uuid::new_v4();
        tracing::error!(%request_id, error = %cause, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InternalServerError,
            "Internal server error",
        )
        .with_details(serde_json::json!({ "requestId": request_id.to_string() }))
    }

    /// The code as it appears on the wire.
    pub fn code_str(&self) -> String {
        self.code
            .to_json()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    fn body(&self) -> ErrorResponse {
        ErrorResponse {
            error: ErrorInfo {
                code: self.code,
                message: self.message.clone(),
                timestamp: Timestamp(SystemClock.now()),
                details: self.details.clone().map(JsonObject),
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
            SessionError::Store(e) => ApiError::internal(&e),
            SessionError::TooManyPending { limit } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimitExceeded,
                message,
            )
            .with_details(serde_json::json!({ "unansweredLimit": limit }))
            .with_header(poem::http::header::RETRY_AFTER, "1"),
            SessionError::Unavailable(_) => {
                tracing::error!(error = %message, "unhealthy");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::ServiceUnavailable,
                    message,
                )
            }
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
        429 => "Too many requests (`RATE_LIMIT_EXCEEDED`); `Retry-After` says when to retry",
        404 => "Not found (`SESSION_NOT_FOUND`, `AGENT_NOT_FOUND`)",
        410 => "The session has expired (`SESSION_EXPIRED`)",
        413 => "Request body too large (`PAYLOAD_TOO_LARGE`)",
        415 => "Content-Type is not application/json (`INVALID_CONTENT_TYPE`)",
        500 => "Internal error (`INTERNAL_SERVER_ERROR`); details carry a request id",
        502 => "The agent failed to answer (`AGENT_ERROR`); the user message stays stored",
        503 => "The server cannot store anything right now (`SERVICE_UNAVAILABLE`)",
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

error_statuses! {
    HealthErrors = [429, 500, 503];
    CreateSessionErrors = [400, 401, 403, 404, 413, 415, 429, 500];
    ListErrors = [400, 401, 403, 429, 500];
    LookupErrors = [401, 403, 404, 410, 429, 500];
    DeleteErrors = [401, 403, 404, 429, 500];
    RenewErrors = [400, 401, 403, 404, 410, 429, 500];
    UpdateTimeoutErrors = [400, 401, 403, 404, 410, 413, 415, 429, 500];
    TokenErrors = [401, 403, 404, 410, 429, 500];
    CreateAgentErrors = [400, 401, 403, 413, 415, 429, 500];
    AgentListErrors = [401, 403, 429, 500];
    SendErrors = [400, 401, 403, 404, 410, 413, 415, 429, 500, 502, 503, 504];
    MessagesErrors = [400, 401, 403, 404, 410, 429, 500];
    EventsErrors = [400, 401, 403, 404, 410, 429, 500, 503];
    AgentLookupErrors = [401, 403, 404, 429, 500];
}
