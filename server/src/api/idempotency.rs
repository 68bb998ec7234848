//! Idempotent requests at the API edge: which key a request carries (the `Idempotency-Key` header, or
//! `clientMessageId` in a send's body), whose it is and for what (the caller's principal, the operation and its
//! session), the fingerprint of its body, and running a handler's work under the key's claim, so that a retry
//! gets the first answer instead of a second session or message.
//!
//! The header is read raw (`KeyHeader`), not through poem-openapi's `Header`, which silently drops a value
//! that is not visible ASCII: such a key is refused, never taken for no key.
//!
//! The work of a claimed request runs in a task of its own: a client that goes away mid-request does not
//! cancel it, so the answer is kept for its retry (which then gets it) instead of the claim being lost halfway.

use std::future::Future;
use std::sync::Arc;

use poem::{Request, RequestBody};
use poem_openapi::registry::{MetaParamIn, MetaSchemaRef};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde_json::Value;

use super::error::ApiError;
use super::types::IdempotencyKeyText;
use crate::auth::{Access, Principal};
use crate::domain::validate;
use crate::domain::{Fingerprint, IdempotencyKey, SessionError, StoredResponse};
use crate::service::{Begun, IdempotentRequest, SessionService};

/// The header that carries a key.
pub const HEADER: &str = "Idempotency-Key";
/// Its alias in `sendMessage`'s body.
pub const BODY_ALIAS: &str = "clientMessageId";

/// The `Idempotency-Key` header, as an operation's parameter: documented as an optional header of type
/// `IdempotencyKeyText`, read as it came. Its value is checked with the body's alias (`request`).
pub struct KeyHeader(pub Option<String>);

impl<'a> ApiExtractor<'a> for KeyHeader {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::Parameter];
    const PARAM_IS_REQUIRED: bool = false;
    type ParamType = IdempotencyKeyText;
    type ParamRawType = IdempotencyKeyText;

    fn param_in() -> Option<MetaParamIn> {
        Some(MetaParamIn::Header)
    }

    fn param_schema_ref() -> Option<MetaSchemaRef> {
        Some(IdempotencyKeyText::schema_ref())
    }

    async fn from_request(
        request: &'a Request,
        _body: &mut RequestBody,
        param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let mut values = request.headers().get_all(param_opts.name).iter();
        let (first, second) = (values.next(), values.next());
        let refused = |message: &str| {
            let invalid = SessionError::invalid_field(format!("{HEADER} {message}"), HEADER);
            poem::Error::from(ApiError::from(invalid))
        };
        if second.is_some() {
            return Err(refused("must be sent once"));
        }
        match first.map(|value| value.to_str()) {
            None => Ok(Self(None)),
            Some(Ok(key)) => Ok(Self(Some(key.to_string()))),
            Some(Err(_)) => Err(refused("must be printable ASCII")),
        }
    }
}

/// The operation a key is used for (keys of different operations, or sessions, never meet).
pub enum Scope<'a> {
    CreateSession,
    SendMessage { session_id: &'a str },
}

impl Scope<'_> {
    fn name(&self) -> String {
        match self {
            Scope::CreateSession => "createSession".to_string(),
            // One session, however its id is spelled (upper or lower case); an id that is no UUID names no
            // session, and its send fails whatever the key.
            Scope::SendMessage { session_id } => match validate::parse_uuid(session_id) {
                Some(id) => format!("sendMessage:{id}"),
                None => format!("sendMessage:{session_id}"),
            },
        }
    }

    /// Whether the body may carry the key as `clientMessageId`.
    fn has_alias(&self) -> bool {
        matches!(self, Scope::SendMessage { .. })
    }
}

/// The idempotent request `header` and `body` make for `principal` in `scope`, if they carry a key. Refused
/// (400) when a key is malformed, or when the header and `clientMessageId` both carry one and they differ.
pub fn request(
    access: &Access,
    principal: &Principal,
    scope: Scope<'_>,
    header: Option<&str>,
    body: &Value,
) -> Result<Option<IdempotentRequest>, SessionError> {
    if let Some(key) = header {
        validate::idempotency_key(key, HEADER)?;
    }
    let alias = match body.get(BODY_ALIAS).filter(|_| scope.has_alias()) {
        None => None,
        Some(Value::String(key)) => {
            validate::idempotency_key(key, BODY_ALIAS)?;
            Some(key.as_str())
        }
        Some(_) => {
            return Err(SessionError::invalid_field(
                format!("{BODY_ALIAS} must be a string"),
                BODY_ALIAS,
            ))
        }
    };
    let key = match (header, alias) {
        (Some(header), Some(alias)) if header != alias => {
            return Err(SessionError::invalid_field(
                format!(
                    "{HEADER} and {BODY_ALIAS} differ: send the key once, or the same key in both"
                ),
                BODY_ALIAS,
            ))
        }
        (header, alias) => match header.or(alias) {
            Some(key) => key.to_string(),
            None => return Ok(None),
        },
    };
    // Where the key came from is not part of the request: a retry may move it between header and body.
    let fingerprint = Fingerprint::of_body(body, &[BODY_ALIAS]);
    Ok(Some(IdempotentRequest {
        key: IdempotencyKey {
            principal: access.principal_id(principal),
            scope: scope.name(),
            key,
        },
        fingerprint,
    }))
}

/// A handler's successful answer, as it is kept for retries.
pub trait Keep {
    fn keep(&self) -> StoredResponse;
}

/// What a request gets: its own work's answer, or the kept answer of the first request under its key.
pub enum Answer<T> {
    Fresh(T),
    Replayed(StoredResponse),
}

/// Runs `work` once per key: at once without a key; under the key's claim with one (keeping its answer on
/// success, releasing the key on failure so that a retry does the work), or not at all when the first request
/// under the key already succeeded.
pub async fn run<T, W>(
    service: &Arc<SessionService>,
    request: Option<IdempotentRequest>,
    work: W,
) -> Result<Answer<T>, ApiError>
where
    T: Keep + Send + 'static,
    W: Future<Output = Result<T, ApiError>> + Send + 'static,
{
    let Some(request) = request else {
        return work.await.map(Answer::Fresh);
    };
    let claim = match service.begin_idempotent(request).await? {
        Begun::Replay(response) => return Ok(Answer::Replayed(response)),
        Begun::Claimed(claim) => claim,
    };
    let task = tokio::spawn(async move {
        let answer = work.await;
        match &answer {
            Ok(done) => claim.complete(done.keep()).await,
            Err(_) => claim.release().await,
        }
        answer
    });
    // A panic in the work released the claim as it unwound (see `service::Claim`).
    let answer = task.await.map_err(|e| ApiError::internal(&e))?;
    answer.map(Answer::Fresh)
}
