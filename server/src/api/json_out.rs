//! `JsonOut<T>`: a JSON response payload that documents `T`'s schema like poem-openapi's `Json<T>`, but writes
//! the body with serde directly; and `JsonBytes<T>`, the same with the body serialized beforehand (an answer
//! kept under an idempotency key, and answered again byte for byte).
//!
//! Why: `Json<T>` builds a `serde_json::Value` tree of the whole response (a map allocation per object, a
//! string per key and value) and then serializes the tree. On `getSession` under load that was a sizeable part
//! of the handler's CPU. The response models derive `Serialize` mirroring their `oai` attributes, and the test
//! `serde_matches_to_json` below holds the two serializations equal, so the contract cannot drift.

use std::marker::PhantomData;

use poem::http::header::{HeaderValue, CONTENT_TYPE};
use poem::http::{HeaderName, StatusCode};
use poem::{Body, IntoResponse, Response};
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::ApiResponse;
use serde::Serialize;

use super::error::ApiError;

pub struct JsonOut<T>(pub T);

const JSON: &str = "application/json; charset=utf-8";

impl<T: Type + Send> Payload for JsonOut<T> {
    const CONTENT_TYPE: &'static str = JSON;

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

/// Room made up front for a body: a session is about half of it, and serde_json's own start (a tenth of it)
/// grew by reallocation and copy three times per session answered.
const BODY_CAPACITY: usize = 1024;
/// Room made up front for the headers an API answer gets (its type, the security headers, the request id, the
/// rate-limit labels), instead of growing the map on the way.
const HEADER_CAPACITY: usize = 12;

impl<T: Serialize + Send> IntoResponse for JsonOut<T> {
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(BODY_CAPACITY);
        json_answer(serde_json::to_writer(&mut body, &self.0).map(|()| body))
    }
}

/// A body serialized by serde as the API answers it, or the API's error if serializing failed. Only a map with
/// non-string keys can fail, and the models have none; the API's error is answered anyway.
pub fn json_answer(body: Result<impl Into<Body>, serde_json::Error>) -> Response {
    match body {
        Ok(body) => json_response(body),
        Err(e) => poem::error::ResponseError::as_response(&ApiError::internal(&e)),
    }
}

/// A response with this JSON body, as every API answer of JSON starts.
pub fn json_response(body: impl Into<Body>) -> Response {
    let mut resp = Response::builder().body(body);
    let headers = resp.headers_mut();
    headers.reserve(HEADER_CAPACITY);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    resp
}

/// A JSON body serialized already, documented as `T`: the answer to a request under an idempotency key, which
/// is kept as these bytes and answered again to retries (then marked `Idempotent-Replayed: true`).
pub struct JsonBytes<T> {
    body: Vec<u8>,
    replayed: bool,
    _schema: PhantomData<fn() -> T>,
}

/// The header that marks a replayed answer.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

impl<T: Serialize> JsonBytes<T> {
    pub fn new(value: &T) -> Result<Self, ApiError> {
        let body = serde_json::to_vec(value).map_err(|e| ApiError::internal(&e))?;
        Ok(Self {
            body,
            replayed: false,
            _schema: PhantomData,
        })
    }
}

impl<T> JsonBytes<T> {
    /// A kept answer, answered again.
    pub fn replayed(body: String) -> Self {
        Self {
            body: body.into_bytes(),
            replayed: true,
            _schema: PhantomData,
        }
    }

    /// The body as text, to be kept (serde_json writes UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl<T: Type> Payload for JsonBytes<T> {
    const CONTENT_TYPE: &'static str = JSON;

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T> IntoResponse for JsonBytes<T> {
    fn into_response(self) -> Response {
        let mut response = json_response(self.body);
        if self.replayed {
            response.headers_mut().insert(
                HeaderName::from_static(IDEMPOTENT_REPLAYED),
                HeaderValue::from_static("true"),
            );
        }
        response
    }
}

impl<T: Type + ToJSON + Serialize + Send> ApiResponse for JsonOut<T> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(StatusCode::OK.as_u16()),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: JSON,
                    schema: T::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use poem_openapi::types::ToJSON;
    use serde_json::json;
    use uuid::Uuid;

    use crate::api::models::*;
    use crate::api::types::{JsonObject, Minutes, Timestamp};

    fn same<T: ToJSON + serde::Serialize>(value: &T) {
        let tree = value.to_json().expect("a value");
        let direct: serde_json::Value =
            serde_json::from_slice(&serde_json::to_vec(value).unwrap()).unwrap();
        assert_eq!(direct, tree);
    }

    fn at(ms: i64) -> Timestamp {
        Timestamp(DateTime::<Utc>::from_timestamp_millis(ms).unwrap())
    }

    fn message(with_options: bool) -> MessageBody {
        MessageBody {
            id: Uuid::new_v4(),
            content: "héllo \"quoted\"\n".into(),
            author_id: Uuid::new_v4(),
            is_agent: with_options,
            created_at: at(1_735_689_600_007),
            metadata: JsonObject::from(
                json!({"thought": "t", "n": 1.5, "nested": {"a": [1, null]}})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            attachments: with_options.then(|| {
                vec![AttachmentBody {
                    kind: AttachmentType::Image,
                    url: "https://example.com/a.png".into(),
                    name: Some("a.png".into()),
                    size: Some(12.0),
                    mime_type: None,
                }]
            }),
            in_reply_to: with_options.then(Uuid::new_v4),
        }
    }

    /// Every model sent through `JsonOut`, with optional fields both present and absent.
    #[test]
    fn serde_matches_to_json() {
        let session = SessionBody {
            session_id: Uuid::new_v4(),
            channel_id: Uuid::new_v4(),
            agent_id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            created_at: at(0),
            last_activity: at(1_735_689_600_000),
            expires_at: at(1_735_689_660_999),
            metadata: JsonObject::from(json!({"k": "v"}).as_object().unwrap().clone()),
            timeout_config: TimeoutConfigBody {
                timeout_minutes: Minutes(30.0),
                auto_renew: true,
                max_duration_minutes: Minutes(7.5),
                warning_threshold_minutes: Minutes(5.0),
            },
            renewal_count: 3,
            time_remaining: 61_000,
            is_near_expiration: false,
            session_token: None,
            session_token_expires_at: None,
        };
        same(&session);
        same(&SessionBody {
            session_token: Some("t.o.k".into()),
            session_token_expires_at: Some(at(1_735_689_660_000)),
            ..session.clone()
        });
        same(&SessionTokenBody {
            session_id: Uuid::new_v4(),
            session_token: "t.o.k".into(),
            session_token_expires_at: at(5),
        });
        same(&SessionListBody {
            sessions: vec![session.clone(), session],
            total: 2,
            stats: SessionStatsBody {
                total_sessions: 3,
                active_sessions: 2,
                expired_sessions: 1,
            },
        });
        same(&DeleteBody::new("Session x deleted".into()));
        same(&crate::api::probes::ProbeStatus::ok());
        same(&crate::api::probes::ProbeStatus {
            status: crate::api::probes::ProbeState::Unavailable,
            reason: Some(crate::api::probes::ProbeReason::StoreUnavailable),
        });
        same(&HealthBody {
            status: "healthy".into(),
            active_sessions: 7,
            expiring_soon: 2,
            timestamp: at(1_735_689_600_123),
            uptime: 12.5,
        });
        for with_options in [false, true] {
            let status = SessionStatusBody {
                expires_at: at(99),
                renewal_count: 1,
                was_renewed: with_options,
                is_near_expiration: !with_options,
            };
            let reply = with_options.then(|| AgentResponseBody {
                text: "hi".into(),
                thought: Some("because".into()),
                actions: Some(vec!["REPLY".into()]),
            });
            same(&MessageResponseBody {
                success: true,
                user_message: message(with_options),
                agent_response: reply.clone(),
                session_status: status.clone(),
                data: MessageResponseData {
                    success: true,
                    user_message: message(with_options),
                    agent_response: reply,
                    session_status: status,
                },
            });
            same(&MessageListBody {
                messages: vec![message(with_options), message(!with_options)],
                has_more: with_options,
                cursors: with_options.then_some(CursorsBody {
                    before: 1,
                    after: 2,
                }),
            });
        }
    }

    /// The domain's `Message` serializes as the API's `Message` (it is what webhooks and the event log get).
    #[test]
    fn domain_messages_have_the_wire_shape() {
        for with_options in [false, true] {
            let wire = message(with_options);
            let domain = crate::domain::Message {
                id: wire.id,
                seq: 9,
                session_id: Uuid::new_v4(),
                author_id: wire.author_id,
                is_agent: wire.is_agent,
                content: wire.content.clone(),
                metadata: wire.metadata.0.clone(),
                attachments: with_options.then(|| {
                    vec![crate::domain::Attachment {
                        kind: crate::domain::AttachmentKind::Image,
                        url: "https://example.com/a.png".into(),
                        name: Some("a.png".into()),
                        size: Some(12.0),
                        mime_type: None,
                    }]
                }),
                in_reply_to: wire.in_reply_to,
                created_at: wire.created_at.0,
            };
            assert_eq!(
                serde_json::to_value(&domain).unwrap(),
                wire.to_json().unwrap()
            );
            assert_eq!(
                serde_json::to_value(MessageBody::from(&domain)).unwrap(),
                wire.to_json().unwrap()
            );
        }
    }
}
