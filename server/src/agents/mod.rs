//! Agent backends: what produces a reply to a user's message. One trait, one implementation per backend kind
//! (`echo` built in, `webhook`, `openai`), chosen from the agent's stored `AgentBackend` config.

mod echo;
mod openai;
mod sse;
mod webhook;

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::domain::{Agent, AgentBackend, AgentReply, Message, Session};

pub use echo::EchoAgent;
pub use openai::OpenAiAgent;
pub use webhook::WebhookAgent;

/// Everything a backend may use to answer: who it is, the session, the new message, and recent history
/// (oldest first, without the new message).
#[derive(Debug, Clone)]
pub struct AgentRequest {
    pub agent: Agent,
    pub session: Session,
    pub message: Message,
    pub history: Vec<Message>,
}

/// Why a backend produced no reply. The text is for the server log and for `error` events; never a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    #[error("agent backend failed: {0}")]
    Failed(String),
    #[error("agent did not answer within {0:?}")]
    Timeout(Duration),
}

/// Chunks of a reply as they are produced. Backends that cannot stream send the whole text as one chunk.
pub type ChunkSender = mpsc::UnboundedSender<String>;

#[async_trait]
pub trait ReplyBackend: Send + Sync {
    /// Produces the reply to `request.message`, sending its text in chunks through `chunks` as it goes; the
    /// returned reply's text is the whole answer (the concatenation of the chunks).
    async fn reply(
        &self,
        request: &AgentRequest,
        chunks: &ChunkSender,
    ) -> Result<AgentReply, AgentError>;
}

/// Builds backends from agent configs, sharing one HTTP client (connection pool) among them.
#[derive(Clone)]
pub struct Backends {
    http: reqwest::Client,
}

impl Default for Backends {
    fn default() -> Self {
        Self::new()
    }
}

impl Backends {
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                // A redirected POST would be replayed as a GET; an agent endpoint that moved is an error.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("HTTP client builds"),
        }
    }

    pub fn for_agent(&self, backend: &AgentBackend) -> Box<dyn ReplyBackend> {
        match backend {
            AgentBackend::Echo => Box::new(EchoAgent),
            AgentBackend::Webhook { url } => {
                Box::new(WebhookAgent::new(self.http.clone(), url.clone()))
            }
            AgentBackend::OpenAi {
                base_url,
                model,
                api_key_env,
                system_prompt,
            } => Box::new(OpenAiAgent::new(
                self.http.clone(),
                base_url.clone(),
                model.clone(),
                api_key_env.clone(),
                system_prompt.clone(),
            )),
        }
    }
}
