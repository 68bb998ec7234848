//! Hand-written conveniences over generated request types: constructors of the agent backend union, and
//! conversions that keep code written against the earlier request shapes compiling (`update_session_timeout`
//! took a `TimeoutConfigInput`; `create_agent` took the flat `AgentBackend` that agents are read back as).

use crate::types::{
    AgentBackend, AgentBackendInput, AgentBackendInputEchoBackend,
    AgentBackendInputEchoBackendType, AgentBackendInputOpenAiBackend,
    AgentBackendInputOpenAiBackendType, AgentBackendInputWebhookBackend,
    AgentBackendInputWebhookBackendType, AgentBackendType, TimeoutConfigInput, TimeoutConfigUpdate,
};

impl AgentBackendInput {
    /// The built-in echo backend.
    pub fn echo() -> Self {
        AgentBackendInputEchoBackend {
            type_: AgentBackendInputEchoBackendType::Echo,
        }
        .into()
    }

    /// A webhook backend at `url`.
    pub fn webhook(url: impl Into<String>) -> Self {
        AgentBackendInputWebhookBackend {
            type_: AgentBackendInputWebhookBackendType::Webhook,
            url: url.into(),
        }
        .into()
    }

    /// An OpenAI-compatible backend at `base_url` using `model`, without a key or a system prompt (set
    /// `api_key_env` / `system_prompt` on the `OpenAiBackend` variant for those).
    pub fn openai(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        AgentBackendInputOpenAiBackend {
            type_: AgentBackendInputOpenAiBackendType::Openai,
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: None,
            system_prompt: None,
        }
        .into()
    }
}

/// An agent's backend as read back, as a backend to create (missing required fields become empty, which the
/// server refuses with a 400 naming the field).
impl From<AgentBackend> for AgentBackendInput {
    fn from(b: AgentBackend) -> Self {
        match b.type_ {
            AgentBackendType::Echo => Self::echo(),
            AgentBackendType::Webhook => Self::webhook(b.url.unwrap_or_default()),
            AgentBackendType::Openai => AgentBackendInputOpenAiBackend {
                type_: AgentBackendInputOpenAiBackendType::Openai,
                base_url: b.base_url.unwrap_or_default(),
                model: b.model.unwrap_or_default(),
                api_key_env: b.api_key_env,
                system_prompt: b.system_prompt,
            }
            .into(),
        }
    }
}

impl From<TimeoutConfigInput> for TimeoutConfigUpdate {
    fn from(c: TimeoutConfigInput) -> Self {
        Self {
            timeout_minutes: c.timeout_minutes,
            auto_renew: c.auto_renew,
            max_duration_minutes: c.max_duration_minutes,
            warning_threshold_minutes: c.warning_threshold_minutes,
        }
    }
}
