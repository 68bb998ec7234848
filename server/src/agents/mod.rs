//! Agent backends: what produces a reply to a user's message. One trait, one implementation per backend kind
//! (`echo` built in, `webhook`, `openai`), chosen from the agent's stored `AgentBackend` config, under the
//! operator's egress policy (`egress`).

mod echo;
pub mod egress;
mod http;
mod openai;
mod resolve;
pub(crate) mod response;
mod sse;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::domain::{Agent, AgentBackend, AgentReply, Message, Session};

pub use echo::EchoAgent;
pub use egress::{EgressPolicy, HostPattern, Refusal};
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

    /// Whether the backend reads `request.history`: one that does not is spared reading it from the store.
    fn reads_history(&self) -> bool {
        true
    }
}

/// Builds backends from agent configs under the operator's egress policy, sharing one HTTP client (connection
/// pool) among them.
#[derive(Clone)]
pub struct Backends {
    http: reqwest::Client,
    policy: Arc<EgressPolicy>,
    has_roots: bool,
}

impl Default for Backends {
    fn default() -> Self {
        Self::new(EgressPolicy::default())
    }
}

impl Backends {
    pub fn new(policy: EgressPolicy) -> Self {
        let policy = Arc::new(policy);
        let http = http::AgentHttp::new(policy.clone());
        Self {
            http: http.client,
            policy,
            has_roots: http.has_roots,
        }
    }

    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// The shared HTTP client (policy-filtered DNS, no redirects, no proxy, a connect timeout), which outbound
    /// webhooks use too.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The backend that answers for an agent configured with `backend`, or why it may not: the policy is checked
    /// again here because a stored agent may predate it, and before any connection, so that nothing (a refused
    /// secret above all) is ever sent.
    pub fn for_agent(&self, backend: &AgentBackend) -> Result<Box<dyn ReplyBackend>, AgentError> {
        self.policy
            .check_backend(backend)
            .map_err(|refusal| AgentError::Failed(refusal.message))?;
        let max_reply_bytes = self.policy.max_reply_bytes;
        Ok(match backend {
            AgentBackend::Echo => Box::new(EchoAgent),
            AgentBackend::Webhook { url } => {
                self.check_tls(url)?;
                Box::new(WebhookAgent::new(
                    self.http.clone(),
                    url.clone(),
                    max_reply_bytes,
                ))
            }
            AgentBackend::OpenAi(openai) => {
                self.check_tls(&openai.base_url)?;
                Box::new(OpenAiAgent::new(
                    self.http.clone(),
                    openai.clone(),
                    max_reply_bytes,
                ))
            }
        })
    }

    fn check_tls(&self, url: &str) -> Result<(), AgentError> {
        match self.tls_refusal(url) {
            Some(why) => Err(AgentError::Failed(why)),
            None => Ok(()),
        }
    }

    /// Why `url` cannot be called at all, when it is https and this machine trusts no certificate.
    pub fn tls_refusal(&self, url: &str) -> Option<String> {
        let https = url
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
        (https && !self.has_roots).then(|| {
            "https needs CA certificates: this machine has none, and --agent-ca-file (AGENT_CA_FILE) is not set"
                .to_string()
        })
    }
}
