//! The built-in `echo` backend: answers deterministically from the user's text, in several chunks, with no
//! network, so that a new server can hold a conversation at once and tests have a predictable agent.

use async_trait::async_trait;

use super::{AgentError, AgentRequest, ChunkSender, ReplyBackend};
use crate::domain::AgentReply;

pub struct EchoAgent;

impl EchoAgent {
    /// The reply to `text`: `Echo: <text>`.
    pub fn answer(text: &str) -> String {
        format!("Echo: {text}")
    }

    /// Splits a reply into chunks at word boundaries (each chunk keeps its trailing space), so that streaming
    /// is visible even for short messages: "Echo: " is always its own first chunk.
    pub fn chunks(reply: &str) -> Vec<String> {
        reply.split_inclusive(' ').map(str::to_string).collect()
    }
}

#[async_trait]
impl ReplyBackend for EchoAgent {
    async fn reply(
        &self,
        request: &AgentRequest,
        chunks: &ChunkSender,
    ) -> Result<AgentReply, AgentError> {
        let text = Self::answer(&request.message.content);
        for chunk in Self::chunks(&text) {
            let _ = chunks.send(chunk);
            // Let consumers see chunks as separate deliveries, as with a real streaming backend.
            tokio::task::yield_now().await;
        }
        Ok(AgentReply {
            text,
            ..AgentReply::default()
        })
    }

    fn reads_history(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::EchoAgent;

    #[test]
    fn chunks_concatenate_to_the_reply() {
        let reply = EchoAgent::answer("hello there world");
        let chunks = EchoAgent::chunks(&reply);
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks.concat(), reply);
    }
}
