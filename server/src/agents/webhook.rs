//! `webhook` backend: placeholder until implemented.

use async_trait::async_trait;

use super::{AgentError, AgentRequest, ChunkSender, ReplyBackend};
use crate::domain::AgentReply;

pub struct WebhookAgent {
    #[allow(dead_code)]
    http: reqwest::Client,
    #[allow(dead_code)]
    url: String,
}

impl WebhookAgent {
    pub fn new(http: reqwest::Client, url: String) -> Self {
        Self { http, url }
    }
}

#[async_trait]
impl ReplyBackend for WebhookAgent {
    async fn reply(
        &self,
        _request: &AgentRequest,
        _chunks: &ChunkSender,
    ) -> Result<AgentReply, AgentError> {
        Err(AgentError::Failed("webhook backend not implemented".into()))
    }
}
