//! `openai` backend: placeholder until implemented.

use async_trait::async_trait;

use super::{AgentError, AgentRequest, ChunkSender, ReplyBackend};
use crate::domain::AgentReply;

#[allow(dead_code)]
pub struct OpenAiAgent {
    http: reqwest::Client,
    base_url: String,
    model: String,
    api_key_env: Option<String>,
    system_prompt: Option<String>,
}

impl OpenAiAgent {
    pub fn new(
        http: reqwest::Client,
        base_url: String,
        model: String,
        api_key_env: Option<String>,
        system_prompt: Option<String>,
    ) -> Self {
        Self {
            http,
            base_url,
            model,
            api_key_env,
            system_prompt,
        }
    }
}

#[async_trait]
impl ReplyBackend for OpenAiAgent {
    async fn reply(
        &self,
        _request: &AgentRequest,
        _chunks: &ChunkSender,
    ) -> Result<AgentReply, AgentError> {
        Err(AgentError::Failed("openai backend not implemented".into()))
    }
}
