//! Handlers of a session's messages and events: `sendMessage` (three transports), `getMessages`, and the
//! real-time events stream.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::{ApiResponse, OpenApi};

use super::access::{Authorized, OwnSession, OwnSessionEvents};
use super::body::JsonBody;
use super::decode;
use super::error::{ApiError, EventsErrors, Failure, MessagesErrors, SendErrors};
use super::event_feed;
use super::event_stream::{SseFrame, SseStream};
use super::event_wire;
use super::idempotency::{self, Answer, Keep, KeyHeader, Scope};
use super::json_out::{JsonBytes, JsonOut};
use super::models::{
    AgentResponseBody, CursorsBody, MessageBody, MessageListBody, MessageResponseBody,
    MessageResponseData, MessageStreamEvent, MessageStreamEventName, SendMessageRequest,
    SessionStatusBody, SessionStreamEvent,
};
use super::stream_slots::StreamSlots;
use super::types::{Cursor, EventData, LastEventId, Timestamp, WideInt};
use super::ApiTags;
use crate::auth::Access;
use crate::domain::{AgentReply, Message, ReplyFailure, SessionError, StoredResponse};
use crate::service::{
    MessagePage, ReplyProgress, ReplyWatch, SendMessage, SendOutcome, SessionService, Transport,
};

type Service<'a> = Data<&'a Arc<SessionService>>;

/// HTTP settings of the streaming endpoints.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Interval of keep-alive comments, so that proxies do not cut idle streams.
    pub keepalive: Duration,
    /// The bounds on open event streams.
    pub slots: Arc<StreamSlots>,
}

impl StreamSettings {
    /// Keep-alives at `keepalive`, with the default bounds on open streams.
    pub fn new(keepalive: Duration) -> Self {
        Self {
            keepalive,
            slots: StreamSlots::new(
                super::stream_slots::DEFAULT_PER_SESSION,
                super::stream_slots::DEFAULT_TOTAL,
            ),
        }
    }
}

type MessageStream = SseStream<MessageStreamEvent>;
type SessionEventStream = SseStream<SessionStreamEvent>;

#[derive(ApiResponse)]
pub enum SendMessageResponse {
    /// Transports `websocket` and `http`: the stored message (and, for `http`, the agent's reply); to a retry
    /// under the same `Idempotency-Key`, the first answer again.
    #[oai(status = 201)]
    Sent(JsonBytes<MessageResponseBody>),
    /// Transport `sse`: `user_message`, then `chunk` events, then exactly one `done` or `error`.
    #[oai(status = 200)]
    Stream(MessageStream),
}

/// A send's answer once its message is stored: the JSON body (`websocket`, and `http` once the agent has
/// answered), or the exchange still to stream (`sse`).
enum Sent {
    Json(JsonBytes<MessageResponseBody>),
    Stream(Box<SendOutcome>),
}

/// What a retry of a send gets: the JSON body as answered; of an `sse` exchange, which cannot be streamed
/// again, the stored user message (a 200 marks it), for the 409 that names it.
impl Keep for Sent {
    fn keep(&self) -> StoredResponse {
        match self {
            Sent::Json(body) => StoredResponse {
                status: 201,
                body: body.text(),
            },
            Sent::Stream(outcome) => StoredResponse {
                status: 200,
                body: event_wire::message(&outcome.user_message).0,
            },
        }
    }
}

/// A page of messages as `getMessages` answers it (also the fast lane's answer).
pub(super) fn message_list(page: MessagePage) -> JsonOut<MessageListBody> {
    let cursors = match (page.messages.last(), page.messages.first()) {
        (Some(oldest), Some(newest)) => Some(CursorsBody {
            before: oldest.created_at.timestamp_millis(),
            after: newest.created_at.timestamp_millis(),
        }),
        _ => None,
    };
    JsonOut(MessageListBody {
        messages: page.messages.into_iter().map(Into::into).collect(),
        has_more: page.has_more,
        cursors,
    })
}

pub struct MessagesApi;

#[OpenApi(tag = "ApiTags::Sessions")]
impl MessagesApi {
    /// Send a message to the session's agent.
    #[oai(
        path = "/api/messaging/sessions/:sessionId/messages",
        method = "post",
        operation_id = "sendMessage"
    )]
    #[allow(clippy::too_many_arguments)] // the operation's parameters, as poem-openapi takes them
    async fn send(
        &self,
        auth: Authorized<OwnSession>,
        service: Service<'_>,
        access: Data<&Arc<Access>>,
        settings: Data<&StreamSettings>,
        #[oai(name = "sessionId")] session_id: Path<String>,
        /// Makes the request safe to retry: within 24 hours, the same key with the same body answers the
        /// first response again instead of sending the message twice. `clientMessageId` in the body is an
        /// alias.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: KeyHeader,
        body: JsonBody<SendMessageRequest>,
    ) -> Result<SendMessageResponse, Failure<SendErrors>> {
        let header = idempotency_key.0.as_deref();
        let scope = Scope::SendMessage {
            session_id: &session_id,
        };
        let keyed = idempotency::request(&access, &auth.principal, scope, header, &body.value)?;
        let key = keyed.as_ref().map(|k| k.key.key.clone());
        let command = decode::send_message(body.value)?;
        let service = service.0.clone();
        let work = send_message(service.clone(), session_id.0.clone(), command);
        let outcome = match idempotency::run(&service, keyed, work).await? {
            Answer::Fresh(Sent::Json(body)) => return Ok(SendMessageResponse::Sent(body)),
            Answer::Fresh(Sent::Stream(outcome)) => outcome,
            Answer::Replayed(kept) if kept.status == 200 => {
                return Err(streamed_already(key.unwrap_or_default(), &kept).into())
            }
            Answer::Replayed(kept) => {
                return Ok(SendMessageResponse::Sent(JsonBytes::replayed(kept.body)))
            }
        };
        let keepalive = settings.keepalive;
        Ok(SendMessageResponse::Stream(SseStream::new(
            exchange_stream(&outcome.user_message, outcome.reply, session_id.0.clone()),
            keepalive,
            |e| SseFrame {
                id: None,
                event: message_event_name(e.event),
                data: e.data.0,
            },
        )))
    }

    /// A page of the session's history, newest first.
    #[oai(
        path = "/api/messaging/sessions/:sessionId/messages",
        method = "get",
        operation_id = "getMessages"
    )]
    async fn messages(
        &self,
        _auth: Authorized<OwnSession>,
        service: Service<'_>,
        #[oai(name = "sessionId")] session_id: Path<String>,
        /// Page size, clamped to 1-100 (default 50): any integer is read and clamped.
        limit: Query<Option<WideInt<false>>>,
        /// Only messages older than this: epoch milliseconds or an ISO-8601 date-time (empty: no bound).
        before: Query<Option<Cursor>>,
        /// Only messages newer than this: epoch milliseconds or an ISO-8601 date-time (empty: no bound). Alone,
        /// pages forward from it.
        after: Query<Option<Cursor>>,
    ) -> Result<JsonOut<MessageListBody>, Failure<MessagesErrors>> {
        let page = service
            .messages(
                &session_id,
                limit.0.map(|l| l.0),
                before.0.as_ref().map(|c| c.0.as_str()),
                after.0.as_ref().map(|c| c.0.as_str()),
            )
            .await?;
        Ok(message_list(page))
    }

    /// Real-time events of the session: messages, reply chunks, renewals, expiry warnings, expiry, deletion.
    ///
    /// Reconnect with `Last-Event-ID` (or `lastEventId`) to receive every stored event after that id first (after
    /// a `replay-gap` event if some of them are no longer stored).
    #[oai(
        path = "/api/messaging/sessions/:sessionId/events",
        method = "get",
        operation_id = "streamSessionEvents"
    )]
    async fn events(
        &self,
        _auth: Authorized<OwnSessionEvents>,
        service: Service<'_>,
        settings: Data<&StreamSettings>,
        #[oai(name = "sessionId")] session_id: Path<String>,
        /// The id of the last event received (set by EventSource clients on reconnect); empty: none.
        #[oai(name = "Last-Event-ID")]
        last_event_id_header: Header<Option<LastEventId>>,
        /// The same as the `Last-Event-ID` header, for clients that cannot set headers.
        #[oai(name = "lastEventId")]
        last_event_id: Query<Option<LastEventId>>,
    ) -> Result<SessionEventStream, Failure<EventsErrors>> {
        let last = event_feed::resume_position(last_event_id.0, last_event_id_header.0)?;
        let feed = event_feed::open(&service, &settings.slots, &session_id, last).await?;
        Ok(SseStream::new(feed.frames(), settings.keepalive, |e| {
            SseFrame {
                id: e.id.map(|id| id.0),
                event: event_wire::event_name(e.event),
                data: e.data.0,
            }
        }))
    }
}

/// Stores the message, then answers as its transport says: at once (`websocket`), once the agent has answered
/// (`http`), or with the exchange to stream (`sse`).
async fn send_message(
    service: Arc<SessionService>,
    session_id: String,
    command: SendMessage,
) -> Result<Sent, ApiError> {
    let mut outcome = service.send(&session_id, command).await?;
    crate::metrics::message(match outcome.transport {
        Transport::WebSocket => "websocket",
        Transport::Http => "http",
        Transport::Sse => "sse",
    });
    match outcome.transport {
        Transport::WebSocket => Ok(Sent::Json(JsonBytes::new(&message_response(
            &outcome, None,
        ))?)),
        Transport::Http => loop {
            let next = match outcome.reply.as_mut() {
                Some(watch) => watch.next().await,
                None => None,
            };
            match next {
                Some(ReplyProgress::Chunk(_)) => continue,
                Some(ReplyProgress::Done { reply, .. }) => {
                    let body = message_response(&outcome, Some(&reply));
                    return Ok(Sent::Json(JsonBytes::new(&body)?));
                }
                Some(ReplyProgress::Failed(e)) => return Err(ApiError::from(&e)),
                Some(ReplyProgress::Ended(why)) => {
                    return Err(ApiError::wait_ended(why, &session_id))
                }
                None => {
                    let failure = ReplyFailure::Failed {
                        reason: "no reply".into(),
                    };
                    return Err(ApiError::from(&failure));
                }
            }
        },
        Transport::Sse => Ok(Sent::Stream(Box::new(outcome))),
    }
}

/// The answer to a retry of an `sse` send: its exchange cannot be streamed again, but its message is stored.
fn streamed_already(key: String, kept: &StoredResponse) -> ApiError {
    let user_message_id = serde_json::from_str::<serde_json::Value>(&kept.body)
        .ok()
        .and_then(|m| m["id"].as_str().map(str::to_string))
        .unwrap_or_default();
    ApiError::from(SessionError::IdempotencyKeyStreamed {
        key,
        user_message_id,
    })
}

fn message_response(outcome: &SendOutcome, reply: Option<&AgentReply>) -> MessageResponseBody {
    let data = MessageResponseData {
        success: true,
        user_message: MessageBody::from(&outcome.user_message),
        agent_response: reply.map(AgentResponseBody::from),
        session_status: SessionStatusBody {
            expires_at: Timestamp(outcome.session.expires_at),
            renewal_count: outcome.session.renewal_count,
            was_renewed: outcome.was_renewed,
            is_near_expiration: outcome.session.is_near_expiration(outcome.now),
        },
    };
    MessageResponseBody {
        success: true,
        user_message: data.user_message.clone(),
        agent_response: data.agent_response.clone(),
        session_status: data.session_status.clone(),
        data,
    }
}

/// The `sse` exchange: the stored user message, the reply's chunks, then one `done` or `error`. The watch
/// always ends with one of those (a reply, a failure, giving up on a queue that stopped moving, the session's
/// deletion or the server's shutdown), so the stream always ends.
fn exchange_stream(
    user_message: &Message,
    reply: Option<ReplyWatch>,
    session_id: String,
) -> BoxStream<'static, MessageStreamEvent> {
    let first = MessageStreamEvent {
        event: MessageStreamEventName::UserMessage,
        data: event_wire::message(user_message),
    };
    let session_id: Arc<str> = session_id.into();
    let rest = stream::unfold(reply, move |reply| {
        let session_id = session_id.clone();
        async move {
            let mut reply = reply?;
            let (event, data) = match reply.next().await? {
                ReplyProgress::Chunk(chunk) => {
                    (MessageStreamEventName::Chunk, EventData::of(&chunk))
                }
                ReplyProgress::Done { message, reply } => (
                    MessageStreamEventName::Done,
                    event_wire::done(&message, &reply),
                ),
                ReplyProgress::Failed(e) => error_frame(&ApiError::from(&e)),
                ReplyProgress::Ended(why) => error_frame(&ApiError::wait_ended(why, &session_id)),
            };
            Some((MessageStreamEvent { event, data }, Some(reply)))
        }
    });
    stream::once(async move { first }).chain(rest).boxed()
}

/// An `error` frame carrying what the `http` transport would answer.
fn error_frame(failure: &ApiError) -> (MessageStreamEventName, EventData) {
    (
        MessageStreamEventName::Error,
        event_wire::failed(&failure.message, &failure.code_str()),
    )
}

fn message_event_name(name: MessageStreamEventName) -> &'static str {
    match name {
        MessageStreamEventName::UserMessage => "user_message",
        MessageStreamEventName::Chunk => "chunk",
        MessageStreamEventName::Done => "done",
        MessageStreamEventName::Error => "error",
    }
}
