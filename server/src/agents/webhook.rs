//! `webhook` backend: POSTs the exchange (agent, session, new message, history) as JSON to the agent's URL and
//! takes the answer from a JSON reply or from a streamed (`text/event-stream`) reply.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::response::{describe, media_type, read_body, truncate};
use super::sse::{self, Flow};
use super::{AgentError, AgentRequest, ChunkSender, ReplyBackend};
use crate::domain::{AgentReply, Message};

pub struct WebhookAgent {
    http: reqwest::Client,
    url: String,
    max_reply_bytes: usize,
}

impl WebhookAgent {
    pub fn new(http: reqwest::Client, url: String, max_reply_bytes: usize) -> Self {
        Self {
            http,
            url,
            max_reply_bytes,
        }
    }
}

/// The request body the webhook receives: messages in the API's `Message` shape (sessions-api.md §3), so that a
/// webhook sees what SDK clients see.
#[derive(Serialize)]
struct WebhookRequest<'a> {
    agent: AgentRef<'a>,
    session: SessionRef<'a>,
    message: &'a Message,
    history: &'a [Message],
}

#[derive(Serialize)]
struct AgentRef<'a> {
    id: Uuid,
    name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionRef<'a> {
    session_id: Uuid,
    channel_id: Uuid,
    agent_id: Uuid,
    user_id: Uuid,
    metadata: &'a Map<String, Value>,
}

impl<'a> WebhookRequest<'a> {
    fn of(request: &'a AgentRequest) -> Self {
        let session = &request.session;
        Self {
            agent: AgentRef {
                id: request.agent.id,
                name: &request.agent.name,
            },
            session: SessionRef {
                session_id: session.id,
                channel_id: session.channel_id,
                agent_id: session.agent_id,
                user_id: session.user_id,
                metadata: &session.metadata,
            },
            message: &request.message,
            history: &request.history,
        }
    }
}

/// A whole (non-streamed) reply, and also the tail fields of a streamed one.
#[derive(Deserialize)]
struct JsonReply {
    text: String,
    #[serde(default)]
    thought: Option<String>,
    #[serde(default)]
    actions: Option<Vec<String>>,
}

/// One event of a streamed reply. Every field is optional so that unknown or partial events pass through.
#[derive(Deserialize, Default)]
struct StreamEvent {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    thought: Option<String>,
    #[serde(default)]
    actions: Option<Vec<String>>,
    #[serde(default)]
    error: Option<Value>,
}

fn failed(msg: impl Into<String>) -> AgentError {
    AgentError::Failed(msg.into())
}

#[async_trait]
impl ReplyBackend for WebhookAgent {
    async fn reply(
        &self,
        request: &AgentRequest,
        chunks: &ChunkSender,
    ) -> Result<AgentReply, AgentError> {
        let response = self
            .http
            .post(&self.url)
            .header(
                reqwest::header::ACCEPT,
                "application/json, text/event-stream",
            )
            .json(&WebhookRequest::of(request))
            .send()
            .await
            .map_err(|e| failed(format!("webhook {}", describe(e))))?;
        let status = response.status();
        if !status.is_success() {
            return Err(failed(format!("webhook answered {status}")));
        }
        let media_type = media_type(&response);
        if media_type == "text/event-stream" {
            return streamed_reply(response, self.max_reply_bytes, chunks).await;
        }
        // Anything else is read as JSON: some frameworks label JSON `text/plain` or not at all, and a body that
        // is not JSON fails below anyway.
        let body = read_body(response, self.max_reply_bytes)
            .await
            .map_err(|e| e.into_agent_error("webhook"))?;
        let reply: JsonReply = serde_json::from_slice(&body).map_err(|e| {
            let what = if media_type.is_empty() {
                "no content type".to_string()
            } else {
                media_type.clone()
            };
            failed(format!(
                "webhook reply is not a valid reply ({what}): {}",
                truncate(&e.to_string(), 200)
            ))
        })?;
        if !reply.text.is_empty() {
            let _ = chunks.send(reply.text.clone());
        }
        Ok(AgentReply {
            text: reply.text,
            thought: reply.thought,
            actions: reply.actions,
        })
    }
}

async fn streamed_reply(
    response: reqwest::Response,
    max_bytes: usize,
    chunks: &ChunkSender,
) -> Result<AgentReply, AgentError> {
    let mut reply = AgentReply::default();
    let mut saw_text = false;
    sse::read_events(response, "webhook", max_bytes, |frame| {
        let event_name = frame.event.as_str();
        let event: StreamEvent = if frame.data.trim().is_empty() {
            StreamEvent::default()
        } else {
            serde_json::from_str(&frame.data).map_err(|e| {
                failed(format!(
                    "webhook stream carried an invalid event: {}",
                    truncate(&e.to_string(), 200)
                ))
            })?
        };
        if event_name == "error" || event.error.is_some() {
            let detail = match &event.error {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Object(o)) => o
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("no message")
                    .to_string(),
                _ => "no message".to_string(),
            };
            return Err(failed(format!(
                "webhook reported an error: {}",
                truncate(&detail, 200)
            )));
        }
        if let Some(piece) = event.text {
            saw_text = true;
            if !piece.is_empty() {
                reply.text.push_str(&piece);
                let _ = chunks.send(piece);
            }
        }
        if event.done || event_name == "done" {
            reply.thought = event.thought;
            reply.actions = event.actions;
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    })
    .await?;
    if !saw_text {
        return Err(failed("webhook stream carried no text"));
    }
    Ok(reply)
}
