//! Wire models: the JSON objects of the API as poem-openapi types, and their conversion from domain values.
//! Request models exist for the schema only; request bodies are validated by `domain::validate`. The response
//! models of the hot endpoints also derive `Serialize`, mirroring their `oai` attributes, for `JsonOut` (see
//! `body.rs`); a test holds the two serializations equal.

use poem_openapi::{Enum, Object, Union};
use serde::Serialize;
use uuid::Uuid;

use super::types::{EventData, EventId, JsonObject, Minutes, Timestamp};
use crate::domain::session::{near_expiration, remaining_ms};
use crate::domain::{
    Agent, AgentBackend, Session, SessionSnapshot, TimeoutConfig, TimeoutConfigPatch,
};
use crate::service::{Health, SessionPage, SessionView};

/// The effective timeout configuration of a session.
#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "TimeoutConfig", rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct TimeoutConfigBody {
    /// Inactivity timeout, in minutes.
    pub timeout_minutes: Minutes,
    /// Whether activity (messages, heartbeats) renews the session.
    pub auto_renew: bool,
    /// Hard limit on the session's lifetime, in minutes from creation.
    pub max_duration_minutes: Minutes,
    /// How long before expiry the session counts as near expiration, in minutes.
    pub warning_threshold_minutes: Minutes,
}

/// A partial timeout configuration: every field optional.
#[derive(Object, Debug, Clone, Default)]
#[oai(rename = "TimeoutConfigInput", rename_all = "camelCase")]
pub struct TimeoutConfigInput {
    #[oai(skip_serializing_if_is_none)]
    pub timeout_minutes: Option<Minutes>,
    #[oai(skip_serializing_if_is_none)]
    pub auto_renew: Option<bool>,
    #[oai(skip_serializing_if_is_none)]
    pub max_duration_minutes: Option<Minutes>,
    #[oai(skip_serializing_if_is_none)]
    pub warning_threshold_minutes: Option<Minutes>,
}

/// A change of a session's timeout configuration: every field optional, omitted ones keep their value.
/// `timeoutMinutes` must lie within the server's bounds (`SESSION_MIN_TIMEOUT_MINUTES` to
/// `SESSION_MAX_TIMEOUT_MINUTES`, 5 to 1440 by default; the schema states the defaults); the other fields are
/// clamped as on create.
#[derive(Object, Debug, Clone, Default)]
#[oai(rename = "TimeoutConfigUpdate", rename_all = "camelCase")]
pub struct TimeoutConfigUpdate {
    #[oai(validator(minimum(value = "5"), maximum(value = "1440")))]
    pub timeout_minutes: Option<f64>,
    pub auto_renew: Option<bool>,
    pub max_duration_minutes: Option<f64>,
    pub warning_threshold_minutes: Option<f64>,
}

/// A conversation between one user and one agent, with its expiry state as of the response.
#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "Session", rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct SessionBody {
    pub session_id: Uuid,
    /// The conversation id; elizaOS clients join this room for real-time replies.
    pub channel_id: Uuid,
    pub agent_id: Uuid,
    pub user_id: Uuid,
    pub created_at: Timestamp,
    pub last_activity: Timestamp,
    pub expires_at: Timestamp,
    pub metadata: JsonObject,
    pub timeout_config: TimeoutConfigBody,
    /// Successful renewals so far.
    pub renewal_count: i64,
    /// Milliseconds until expiry, never negative.
    pub time_remaining: i64,
    /// True while the remaining time is within the warning threshold.
    pub is_near_expiration: bool,
    /// createSession only: a token for this session's own routes, to hand to the end user's client (send it as
    /// `Authorization: Bearer <token>`).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// createSession only: when `sessionToken` expires, at the latest the session's hard end.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_token_expires_at: Option<Timestamp>,
}

/// A session token: admits its holder to that session's own routes (get, heartbeat, renew, send, messages,
/// events, delete) until it expires, at the latest at the session's hard end.
#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "SessionToken", rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct SessionTokenBody {
    pub session_id: Uuid,
    pub session_token: String,
    pub session_token_expires_at: Timestamp,
}

#[derive(Object, Debug, Clone)]
#[oai(rename = "CreateSessionRequest", rename_all = "camelCase")]
pub struct CreateSessionRequest {
    /// ID of the agent to start a session with.
    pub agent_id: Uuid,
    /// ID of the user creating the session.
    pub user_id: Uuid,
    /// Additional metadata for the session (a JSON object of at most 10 240 bytes).
    pub metadata: Option<JsonObject>,
    /// Optional timeout configuration; out-of-range values are clamped.
    pub timeout_config: Option<TimeoutConfigInput>,
}

#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "SessionStats", rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct SessionStatsBody {
    pub total_sessions: u64,
    pub active_sessions: u64,
    pub expired_sessions: u64,
}

#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "SessionList", rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct SessionListBody {
    /// Active sessions, newest first.
    pub sessions: Vec<SessionBody>,
    /// Active sessions matching the filters, over all pages.
    pub total: u64,
    pub stats: SessionStatsBody,
}

#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "SessionsHealth", rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct HealthBody {
    /// Always `healthy` when the server can answer.
    pub status: String,
    pub active_sessions: u64,
    /// Active sessions inside their warning threshold.
    pub expiring_soon: u64,
    pub timestamp: Timestamp,
    /// Seconds since the server started.
    pub uptime: f64,
}

/// A deletion's outcome. `data` repeats it: the elizaOS TypeScript SDK returns `body.data` of any body that
/// has a `success` key.
#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "DeleteResponse", rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct DeleteBody {
    pub success: bool,
    pub message: String,
    pub data: DeleteData,
}

#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "DeleteResult", rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct DeleteData {
    pub success: bool,
    pub message: String,
}

impl DeleteBody {
    pub fn new(message: String) -> Self {
        Self {
            success: true,
            message: message.clone(),
            data: DeleteData {
                success: true,
                message,
            },
        }
    }
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "AgentBackendType", rename_all = "lowercase")]
pub enum AgentBackendType {
    Echo,
    Webhook,
    Openai,
}

/// How an agent produces replies: `echo` (built in), `webhook` (`url`), or `openai` (`baseUrl`, `model`,
/// optional `apiKeyEnv` naming the environment variable that holds the key, optional `systemPrompt`).
#[derive(Object, Debug, Clone)]
#[oai(rename = "AgentBackend", rename_all = "camelCase")]
pub struct AgentBackendBody {
    #[oai(rename = "type")]
    pub kind: AgentBackendType,
    #[oai(skip_serializing_if_is_none)]
    pub url: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub base_url: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub model: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub api_key_env: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub system_prompt: Option<String>,
}

#[derive(Object, Debug, Clone)]
#[oai(rename = "Agent", rename_all = "camelCase")]
pub struct AgentBody {
    pub id: Uuid,
    pub name: String,
    pub backend: AgentBackendBody,
    /// Session defaults of this agent, between a session's own config and the server's defaults.
    pub session_defaults: TimeoutConfigInput,
    pub created_at: Timestamp,
}

/// The built-in echo backend: answers `Echo: <text>`, streamed word by word.
#[derive(Object, Debug, Clone)]
#[oai(rename = "EchoBackend", rename_all = "camelCase")]
pub struct EchoBackendInput {}

/// A webhook backend: each message is POSTed to `url`.
#[derive(Object, Debug, Clone)]
#[oai(rename = "WebhookBackend", rename_all = "camelCase")]
pub struct WebhookBackendInput {
    /// An http or https URL: a host name (labels starting with a letter), an IPv4 address or a bracketed IPv6
    /// one, an optional port, path and query. Link-local and cloud-metadata addresses are refused unless the
    /// operator allows them. (The pattern is `decode::HTTP_URL_PATTERN`'s, which the server checks.)
    #[oai(validator(
        pattern = r#"^https?://([A-Za-z]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z]([A-Za-z0-9-]*[A-Za-z0-9])?)*|(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|\[(([0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,7}:|([0-9A-Fa-f]{1,4}:){1,6}:[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,5}(:[0-9A-Fa-f]{1,4}){1,2}|([0-9A-Fa-f]{1,4}:){1,4}(:[0-9A-Fa-f]{1,4}){1,3}|([0-9A-Fa-f]{1,4}:){1,3}(:[0-9A-Fa-f]{1,4}){1,4}|([0-9A-Fa-f]{1,4}:){1,2}(:[0-9A-Fa-f]{1,4}){1,5}|[0-9A-Fa-f]{1,4}:(:[0-9A-Fa-f]{1,4}){1,6}|:((:[0-9A-Fa-f]{1,4}){1,7}|:)|::([Ff]{4}(:0{1,4})?:)?(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|([0-9A-Fa-f]{1,4}:){1,4}:(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3})\])(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?(/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)*(\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?$"#
    ))]
    pub url: String,
}

/// An OpenAI-compatible chat-completions backend.
#[derive(Object, Debug, Clone)]
#[oai(rename = "OpenAiBackend", rename_all = "camelCase")]
pub struct OpenAiBackendInput {
    /// The API's base URL (`/chat/completions` is appended), as `url` of a webhook.
    #[oai(validator(
        pattern = r#"^https?://([A-Za-z]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z]([A-Za-z0-9-]*[A-Za-z0-9])?)*|(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|\[(([0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,7}:|([0-9A-Fa-f]{1,4}:){1,6}:[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,5}(:[0-9A-Fa-f]{1,4}){1,2}|([0-9A-Fa-f]{1,4}:){1,4}(:[0-9A-Fa-f]{1,4}){1,3}|([0-9A-Fa-f]{1,4}:){1,3}(:[0-9A-Fa-f]{1,4}){1,4}|([0-9A-Fa-f]{1,4}:){1,2}(:[0-9A-Fa-f]{1,4}){1,5}|[0-9A-Fa-f]{1,4}:(:[0-9A-Fa-f]{1,4}){1,6}|:((:[0-9A-Fa-f]{1,4}){1,7}|:)|::([Ff]{4}(:0{1,4})?:)?(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|([0-9A-Fa-f]{1,4}:){1,4}:(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3})\])(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?(/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)*(\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?$"#
    ))]
    pub base_url: String,
    #[oai(validator(min_length = 1, pattern = r"^[^\u0000]*$"))]
    pub model: String,
    /// The environment variable of the server that holds the API key: starting with `AGENT_SECRET_`, or one the
    /// operator listed in `--agent-secret-env`.
    #[oai(validator(pattern = r"^AGENT_SECRET_[A-Za-z0-9_]+$"))]
    pub api_key_env: Option<String>,
    #[oai(validator(min_length = 1, pattern = r"^[^\u0000]*$"))]
    pub system_prompt: Option<String>,
}

/// How a new agent produces replies, by `type`.
#[derive(Union, Debug, Clone)]
#[oai(rename = "AgentBackendInput", discriminator_name = "type", one_of)]
pub enum AgentBackendInput {
    #[oai(mapping = "echo")]
    Echo(EchoBackendInput),
    #[oai(mapping = "webhook")]
    Webhook(WebhookBackendInput),
    #[oai(mapping = "openai")]
    OpenAi(OpenAiBackendInput),
}

#[derive(Object, Debug, Clone)]
#[oai(rename = "CreateAgentRequest", rename_all = "camelCase")]
pub struct CreateAgentRequest {
    /// Display name, 1 to 100 characters, not only blanks.
    #[oai(validator(
        max_length = 100,
        pattern = r"^[^\u0000]*[^\u0000\t-\r \u001c-\u001f\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff][^\u0000]*$"
    ))]
    pub name: String,
    /// Defaults to `{"type": "echo"}`.
    pub backend: Option<AgentBackendInput>,
    pub session_defaults: Option<TimeoutConfigInput>,
}

#[derive(Object, Debug, Clone)]
#[oai(rename = "AgentList", rename_all = "camelCase")]
pub struct AgentListBody {
    pub agents: Vec<AgentBody>,
    pub total: u64,
}

impl From<TimeoutConfig> for TimeoutConfigBody {
    fn from(c: TimeoutConfig) -> Self {
        Self {
            timeout_minutes: Minutes(c.timeout_minutes),
            auto_renew: c.auto_renew,
            max_duration_minutes: Minutes(c.max_duration_minutes),
            warning_threshold_minutes: Minutes(c.warning_threshold_minutes),
        }
    }
}

impl From<TimeoutConfigPatch> for TimeoutConfigInput {
    fn from(p: TimeoutConfigPatch) -> Self {
        Self {
            timeout_minutes: p.timeout_minutes.map(Minutes),
            auto_renew: p.auto_renew,
            max_duration_minutes: p.max_duration_minutes.map(Minutes),
            warning_threshold_minutes: p.warning_threshold_minutes.map(Minutes),
        }
    }
}

impl SessionBody {
    pub fn from_view(view: SessionView) -> Self {
        Self::new(&view.session, view.now)
    }

    pub fn new(s: &Session, now: chrono::DateTime<chrono::Utc>) -> Self {
        Self::from_snapshot(SessionSnapshot::of(s), now)
    }

    /// The session as an event shows it, with its expiry state as of `now`.
    pub fn from_snapshot(s: SessionSnapshot, now: chrono::DateTime<chrono::Utc>) -> Self {
        Self {
            session_id: s.id,
            channel_id: s.channel_id,
            agent_id: s.agent_id,
            user_id: s.user_id,
            created_at: Timestamp(s.created_at),
            last_activity: Timestamp(s.last_activity),
            expires_at: Timestamp(s.expires_at),
            timeout_config: s.timeout_config.into(),
            renewal_count: s.renewal_count,
            time_remaining: remaining_ms(s.expires_at, now),
            is_near_expiration: near_expiration(s.expires_at, &s.timeout_config, now),
            metadata: JsonObject(s.metadata),
            session_token: None,
            session_token_expires_at: None,
        }
    }
}

impl From<SessionPage> for SessionListBody {
    fn from(page: SessionPage) -> Self {
        Self {
            sessions: page
                .sessions
                .iter()
                .map(|s| SessionBody::new(s, page.now))
                .collect(),
            total: page.counts.active,
            stats: SessionStatsBody {
                total_sessions: page.counts.total,
                active_sessions: page.counts.active,
                expired_sessions: page.counts.total - page.counts.active,
            },
        }
    }
}

impl From<Health> for HealthBody {
    fn from(h: Health) -> Self {
        Self {
            status: "healthy".into(),
            active_sessions: h.counts.active,
            expiring_soon: h.counts.expiring_soon,
            timestamp: Timestamp(h.now),
            uptime: h.uptime_seconds,
        }
    }
}

impl From<&AgentBackend> for AgentBackendBody {
    fn from(b: &AgentBackend) -> Self {
        let mut body = AgentBackendBody {
            kind: AgentBackendType::Echo,
            url: None,
            base_url: None,
            model: None,
            api_key_env: None,
            system_prompt: None,
        };
        match b {
            AgentBackend::Echo => {}
            AgentBackend::Webhook { url } => {
                body.kind = AgentBackendType::Webhook;
                body.url = Some(url.clone());
            }
            AgentBackend::OpenAi(openai) => {
                body.kind = AgentBackendType::Openai;
                body.base_url = Some(openai.base_url.clone());
                body.model = Some(openai.model.clone());
                body.api_key_env = openai.api_key_env.clone();
                body.system_prompt = openai.system_prompt.clone();
            }
        }
        body
    }
}

impl From<&Agent> for AgentBody {
    fn from(a: &Agent) -> Self {
        Self {
            id: a.id,
            name: a.name.clone(),
            backend: (&a.backend).into(),
            session_defaults: a.session_defaults.into(),
            created_at: Timestamp(a.created_at),
        }
    }
}

#[derive(Enum, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "AttachmentType", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum AttachmentType {
    Image,
    File,
    Audio,
    Video,
    Document,
}

#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "MessageAttachment", rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct AttachmentBody {
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: AttachmentType,
    #[oai(validator(min_length = 1))]
    pub url: String,
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Size in bytes.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<f64>,
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// A stored message of a session's history.
#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "Message", rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct MessageBody {
    pub id: Uuid,
    pub content: String,
    /// The user's id, or the agent's id for replies.
    pub author_id: Uuid,
    pub is_agent: bool,
    pub created_at: Timestamp,
    /// For agent replies: `thought` and `actions` when the agent gave them.
    pub metadata: JsonObject,
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<AttachmentBody>>,
    /// For agent replies: the id of the user message answered.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<Uuid>,
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "TransportType", rename_all = "lowercase")]
pub enum TransportType {
    Http,
    Sse,
    Websocket,
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "ResponseMode", rename_all = "lowercase")]
pub enum ResponseMode {
    Sync,
    Stream,
    Websocket,
}

#[derive(Object, Debug, Clone)]
#[oai(rename = "SendMessageRequest", rename_all = "camelCase")]
pub struct SendMessageRequest {
    /// The message, 1 to 4000 characters, not only blanks.
    #[oai(validator(
        min_length = 1,
        max_length = 4000,
        pattern = r"^[^\u0000]*[^\u0000\t-\r \u001c-\u001f\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff][^\u0000]*$"
    ))]
    pub content: String,
    /// At most 20.
    #[oai(validator(max_items = 20))]
    pub attachments: Option<Vec<AttachmentBody>>,
    /// A JSON object of at most 10 240 bytes.
    pub metadata: Option<JsonObject>,
    /// `websocket` (default): 201 at once, the reply arrives on the events stream; `http`: 201 with the
    /// reply; `sse`: 200 `text/event-stream` of the exchange.
    pub transport: Option<TransportType>,
    /// Legacy alias of `transport`: `sync` = http, `stream` = sse.
    pub mode: Option<ResponseMode>,
    /// The `Idempotency-Key` header's alias (elizaOS 2.x's name): 1 to 255 printable ASCII characters, not
    /// starting or ending with a space.
    #[oai(validator(min_length = 1, max_length = 255, pattern = "^[!-~]([ -~]*[!-~])?$"))]
    pub client_message_id: Option<String>,
}

/// The agent's answer.
#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "AgentResponse", rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct AgentResponseBody {
    pub text: String,
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thought: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<String>>,
}

/// The session after the message (which renews it when `autoRenew` is on).
#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "SessionStatus", rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct SessionStatusBody {
    pub expires_at: Timestamp,
    pub renewal_count: i64,
    pub was_renewed: bool,
    pub is_near_expiration: bool,
}

/// The result of sending a message.
#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "MessageResponseData", rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct MessageResponseData {
    pub success: bool,
    pub user_message: MessageBody,
    /// With the `http` transport only.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_response: Option<AgentResponseBody>,
    pub session_status: SessionStatusBody,
}

/// The result of sending a message. `data` repeats it: the elizaOS TypeScript SDK returns `body.data` of any
/// body that has a `success` key.
#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "MessageResponse", rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct MessageResponseBody {
    pub success: bool,
    pub user_message: MessageBody,
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_response: Option<AgentResponseBody>,
    pub session_status: SessionStatusBody,
    pub data: MessageResponseData,
}

#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "MessageCursors", rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct CursorsBody {
    /// Epoch milliseconds of the oldest message of the page: pass as `before` for the previous page.
    pub before: i64,
    /// Epoch milliseconds of the newest message of the page: pass as `after` for the next page.
    pub after: i64,
}

#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "MessageList", rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct MessageListBody {
    /// Newest first.
    pub messages: Vec<MessageBody>,
    /// True only if more messages exist in the direction of the request.
    pub has_more: bool,
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursors: Option<CursorsBody>,
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "MessageStreamEventName", rename_all = "snake_case")]
pub enum MessageStreamEventName {
    UserMessage,
    Chunk,
    Done,
    Error,
}

/// One frame of the `sse` transport: `event: <event>` and `data: <data as JSON>`. `user_message` carries the
/// stored Message, `chunk` a ReplyChunk, `done` a MessageStreamDone, `error` `{"error": "<message>", "code"}`.
#[derive(Object, Debug, Clone)]
#[oai(rename = "MessageStreamEvent", rename_all = "camelCase")]
pub struct MessageStreamEvent {
    pub event: MessageStreamEventName,
    pub data: EventData,
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "SessionEventName", rename_all = "snake_case")]
pub enum SessionEventName {
    Message,
    Chunk,
    Session,
    Warning,
    Expired,
    Deleted,
    /// Named as elizaOS 2.x names it.
    #[oai(rename = "replay-gap")]
    ReplayGap,
    /// The server is stopping: reconnect (with the last id) to another instance, or to this one once it is back.
    Reconnect,
}

/// One frame of the events stream: `id: <id>` (absent for transient `chunk` and `deleted` events, and for
/// `replay-gap`), `event: <event>`, `data: <data as JSON>`. `message` carries a Message, `chunk` a ReplyChunk,
/// `session` `{reason, session}`, `warning` `{sessionId, expiresAt, timeRemaining, warningThresholdMinutes}`,
/// `expired` `{sessionId, expiredAt}`, `deleted` `{sessionId}`, `replay-gap` `{requested, oldestAvailable}`,
/// `reconnect` `{reason}`.
#[derive(Object, Debug, Clone)]
#[oai(rename = "SessionStreamEvent", rename_all = "camelCase")]
pub struct SessionStreamEvent {
    #[oai(skip_serializing_if_is_none)]
    pub id: Option<EventId>,
    pub event: SessionEventName,
    pub data: EventData,
}

impl From<&crate::domain::Attachment> for AttachmentBody {
    fn from(a: &crate::domain::Attachment) -> Self {
        use crate::domain::AttachmentKind as K;
        Self {
            kind: match a.kind {
                K::Image => AttachmentType::Image,
                K::File => AttachmentType::File,
                K::Audio => AttachmentType::Audio,
                K::Video => AttachmentType::Video,
                K::Document => AttachmentType::Document,
            },
            url: a.url.clone(),
            name: a.name.clone(),
            size: a.size,
            mime_type: a.mime_type.clone(),
        }
    }
}

impl From<&crate::domain::Message> for MessageBody {
    fn from(m: &crate::domain::Message) -> Self {
        Self {
            content: m.content.clone(),
            ..Self::shared(m)
        }
    }
}

/// Moves the text rather than copying it (a page of messages, answered once).
impl From<crate::domain::Message> for MessageBody {
    fn from(m: crate::domain::Message) -> Self {
        let shared = Self::shared(&m);
        Self {
            content: m.content,
            ..shared
        }
    }
}

impl MessageBody {
    /// Everything but the text.
    fn shared(m: &crate::domain::Message) -> Self {
        Self {
            id: m.id,
            content: String::new(),
            author_id: m.author_id,
            is_agent: m.is_agent,
            created_at: Timestamp(m.created_at),
            metadata: JsonObject(m.metadata.clone()),
            attachments: m
                .attachments
                .as_ref()
                .map(|a| a.iter().map(Into::into).collect()),
            in_reply_to: m.in_reply_to,
        }
    }
}

impl From<&crate::domain::AgentReply> for AgentResponseBody {
    fn from(r: &crate::domain::AgentReply) -> Self {
        Self {
            text: r.text.clone(),
            thought: r.thought.clone(),
            actions: r.actions.clone(),
        }
    }
}
