//! `SseStream<E>`: an event-stream response whose schema in the spec describes **one event** (`E`), as OpenAPI
//! 3.0 reads the `schema` of `text/event-stream` and as clients and fuzzers validate each event against it.
//! poem-openapi's own `EventStream` documents an array of events (`type: array, format: event-stream`), which
//! no event matches. The response itself is poem-openapi's `EventStream`: the same frames, keep-alives included.

use futures::stream::BoxStream;
use poem::{IntoResponse, Response};
use poem_openapi::payload::{EventStream, Payload};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::ApiResponse;

pub struct SseStream<E: Send + 'static>(pub EventStream<BoxStream<'static, E>>);

const CONTENT_TYPE: &str = "text/event-stream";

impl<E: Type + ToJSON + Send + 'static> Payload for SseStream<E> {
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;

    fn schema_ref() -> MetaSchemaRef {
        E::schema_ref()
    }

    fn register(registry: &mut Registry) {
        E::register(registry);
    }
}

impl<E: Type + ToJSON + Send + 'static> IntoResponse for SseStream<E> {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl<E: Type + ToJSON + Send + 'static> ApiResponse for SseStream<E> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: CONTENT_TYPE,
                    schema: E::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        E::register(registry);
    }
}
