//! `JsonBody<T>`: a request body extractor that documents `T`'s schema but hands the handler the raw JSON value.
//!
//! Validation happens in the domain, from the value, because the API's error messages and the order of its
//! checks are part of the contract; a derive-based parse would answer its own messages in its own order.

use std::marker::PhantomData;

use poem::http::StatusCode;
use poem::{Request, RequestBody};
use poem_openapi::registry::{MetaMediaType, MetaRequest, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde_json::Value;

use super::error::{ApiError, ErrorCode};

/// Largest accepted request body. Generous for a session create (metadata alone may be 10 KiB) while keeping a
/// flood of large bodies cheap to refuse.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub struct JsonBody<T> {
    pub value: Value,
    _schema: PhantomData<fn() -> T>,
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The body's length as the request states it (`Content-Length`), if it does.
fn declared_length(request: &Request) -> Option<usize> {
    request
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
}

/// Whether the request states a JSON body of a length within the limit: one this extractor reads whole, and
/// the only kind the fast lane reads (so that it can hand the body back unchanged).
pub(super) fn states_json_within_limit(request: &Request) -> bool {
    request.content_type().is_some_and(is_json)
        && declared_length(request).is_some_and(|n| n <= MAX_BODY_BYTES)
}

impl<'a, T: Type> ApiExtractor<'a> for JsonBody<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: "application/json; charset=utf-8",
                schema: T::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        if !request.content_type().is_some_and(is_json) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::InvalidContentType,
                "Content-Type must be application/json",
            )
            .into());
        }
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                format!("Request body exceeds {MAX_BODY_BYTES} bytes"),
            )
        };
        if declared_length(request).is_some_and(|n| n > MAX_BODY_BYTES) {
            return Err(too_large().into());
        }
        let bytes = body
            .take()?
            .into_bytes_limit(MAX_BODY_BYTES)
            .await
            .map_err(|e| match e {
                poem::error::ReadBodyError::PayloadTooLarge => too_large(),
                e => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::ValidationError,
                    e.to_string(),
                ),
            })?;
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::ValidationError,
                format!("Malformed JSON in request body: {e}"),
            )
        })?;
        Ok(JsonBody {
            value,
            _schema: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
    }
}
