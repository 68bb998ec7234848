//! `openai` backend: any OpenAI-compatible chat-completions endpoint, with the session's history as context.
//! Always asks for a streamed completion and relays its deltas as chunks; accepts a whole completion from
//! servers that ignore `stream`.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::response::{describe, is_json, media_type, read_body, truncate, BodyError};
use super::sse::{self, Flow};
use super::{AgentError, AgentRequest, ChunkSender, ReplyBackend};
use crate::domain::{AgentReply, OpenAiBackend};

pub struct OpenAiAgent {
    http: reqwest::Client,
    settings: OpenAiBackend,
    max_reply_bytes: usize,
}

impl OpenAiAgent {
    /// `settings.api_key_env` must already have passed the egress policy (`Backends::for_agent` checks it).
    pub fn new(http: reqwest::Client, settings: OpenAiBackend, max_reply_bytes: usize) -> Self {
        Self {
            http,
            settings,
            max_reply_bytes,
        }
    }

    fn endpoint(&self) -> String {
        format!(
            "{}/chat/completions",
            self.settings.base_url.trim_end_matches('/')
        )
    }

    /// Read at each request rather than at construction, so a rotated key is picked up without a restart.
    /// Local servers (llama.cpp, Ollama, LM Studio) need no key, hence no header when none is configured.
    fn api_key(&self) -> Option<String> {
        let name = self.settings.api_key_env.as_deref()?;
        std::env::var(name).ok().filter(|k| !k.is_empty())
    }

    fn body(&self, request: &AgentRequest) -> Value {
        let mut messages = Vec::with_capacity(request.history.len() + 2);
        if let Some(prompt) = &self.settings.system_prompt {
            messages.push(json!({ "role": "system", "content": prompt }));
        }
        for m in &request.history {
            let role = if m.is_agent { "assistant" } else { "user" };
            messages.push(json!({ "role": role, "content": m.content }));
        }
        messages.push(json!({ "role": "user", "content": request.message.content }));
        json!({ "model": self.settings.model, "messages": messages, "stream": true })
    }
}

fn failed(msg: impl Into<String>) -> AgentError {
    AgentError::Failed(msg.into())
}

/// The message of an error body: `{"error": {"message": ...}}` as OpenAI sends it, or `{"error": "..."}` as
/// some compatible servers do.
fn error_message(body: &Value) -> Option<&str> {
    match body.get("error")? {
        Value::String(s) => Some(s),
        other => other.get("message")?.as_str(),
    }
}

#[async_trait]
impl ReplyBackend for OpenAiAgent {
    async fn reply(
        &self,
        request: &AgentRequest,
        chunks: &ChunkSender,
    ) -> Result<AgentReply, AgentError> {
        let mut call = self
            .http
            .post(self.endpoint())
            .header(
                reqwest::header::ACCEPT,
                "text/event-stream, application/json",
            )
            .json(&self.body(request));
        if let Some(key) = self.api_key() {
            call = call.bearer_auth(key);
        }
        let response = call
            .send()
            .await
            .map_err(|e| failed(format!("openai endpoint {}", describe(e))))?;

        let status = response.status();
        if !status.is_success() {
            let body = read_body(response, self.max_reply_bytes).await;
            return Err(failed(match body {
                Err(too_large @ BodyError::TooLarge(_)) => {
                    format!("openai endpoint answered {status}, and its {too_large}")
                }
                Err(BodyError::Broken(_)) => format!("openai endpoint answered {status}"),
                Ok(body) => match serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| error_message(&v).map(|m| truncate(m, 200)))
                {
                    Some(message) => format!("openai endpoint answered {status}: {message}"),
                    None => format!("openai endpoint answered {status}"),
                },
            }));
        }

        if is_json(&media_type(&response)) {
            return whole_completion(response, self.max_reply_bytes, chunks).await;
        }
        streamed_completion(response, self.max_reply_bytes, chunks).await
    }
}

/// A server that ignored `stream: true` and answered one completion.
async fn whole_completion(
    response: reqwest::Response,
    max_bytes: usize,
    chunks: &ChunkSender,
) -> Result<AgentReply, AgentError> {
    let body = read_body(response, max_bytes)
        .await
        .map_err(|e| e.into_agent_error("openai"))?;
    let body: Value =
        serde_json::from_slice(&body).map_err(|_| failed("openai reply is not valid JSON"))?;
    if let Some(message) = error_message(&body) {
        return Err(failed(format!(
            "openai endpoint reported an error: {}",
            truncate(message, 200)
        )));
    }
    let text = body
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or_else(|| failed("openai reply has no choices[0].message.content"))?
        .to_string();
    if !text.is_empty() {
        let _ = chunks.send(text.clone());
    }
    Ok(AgentReply {
        text,
        ..AgentReply::default()
    })
}

async fn streamed_completion(
    response: reqwest::Response,
    max_bytes: usize,
    chunks: &ChunkSender,
) -> Result<AgentReply, AgentError> {
    let mut text = String::new();
    // A body that never carried a completion chunk (an HTML page, an empty 200) is a failure, not an empty
    // answer; a completion whose deltas are all empty is a legitimate empty answer.
    let mut saw_completion = false;
    sse::read_events(response, "openai", max_bytes, |frame| {
        let data = frame.data.trim();
        if data == "[DONE]" {
            return Ok(Flow::Stop);
        }
        if data.is_empty() {
            return Ok(Flow::Continue);
        }
        let event: Value = serde_json::from_str(data)
            .map_err(|_| failed("openai stream carried an invalid event"))?;
        // OpenAI reports failures that happen mid-generation as an `error` object inside the stream.
        if let Some(message) = error_message(&event) {
            return Err(failed(format!(
                "openai endpoint reported an error: {}",
                truncate(message, 200)
            )));
        }
        if event.get("choices").is_some() {
            saw_completion = true;
        }
        if let Some(piece) = event
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
        {
            text.push_str(piece);
            let _ = chunks.send(piece.to_string());
        }
        Ok(Flow::Continue)
    })
    .await?;
    if !saw_completion {
        return Err(failed("openai stream carried no completion"));
    }
    Ok(AgentReply {
        text,
        ..AgentReply::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(base_url: &str) -> OpenAiAgent {
        let settings = OpenAiBackend {
            base_url: base_url.into(),
            model: "m".into(),
            ..OpenAiBackend::default()
        };
        OpenAiAgent::new(reqwest::Client::new(), settings, 1024)
    }

    #[test]
    fn endpoint_joins_without_doubling_slashes() {
        assert_eq!(
            agent("http://127.0.0.1:1234/v1").endpoint(),
            "http://127.0.0.1:1234/v1/chat/completions"
        );
        assert_eq!(
            agent("http://127.0.0.1:1234/v1/").endpoint(),
            "http://127.0.0.1:1234/v1/chat/completions"
        );
    }

    #[test]
    fn error_messages_in_both_shapes() {
        assert_eq!(
            error_message(&json!({"error": {"message": "bad key"}})),
            Some("bad key")
        );
        assert_eq!(
            error_message(&json!({"error": "overloaded"})),
            Some("overloaded")
        );
        assert_eq!(error_message(&json!({"choices": []})), None);
    }
}
