//! The domain: sessions, agents, timeout rules and input validation, with no HTTP and no SQL.

pub mod agent;
pub mod error;
pub mod event;
pub mod idempotency;
pub mod ids;
pub mod message;
pub mod session;
pub mod timeout;
pub mod validate;
pub mod webhook;

use chrono::{DateTime, SecondsFormat, Utc};

pub use agent::{Agent, AgentBackend, OpenAiBackend};
pub use error::{SessionError, StoreError};
pub use event::{
    EventKind, EventPayload, ReplayGap, ReplyChunk, ReplyFailure, SessionChange, SessionEvent,
    SessionSnapshot,
};
pub use idempotency::{
    ClaimOutcome, Fingerprint, IdempotencyKey, IdempotencyRecord, KeyClaim, KeyState,
    StoredResponse,
};
pub use message::{AgentReply, Attachment, AttachmentKind, Message};
pub use session::{Liveness, Notice, RenewRefused, Session};
pub use timeout::{TimeoutConfig, TimeoutConfigPatch, TimeoutPolicy};
pub use webhook::{
    Delivery, DeliveryOutcome, EventFilter, OutboundEvent, RetryPolicy, Webhook, WebhookEventType,
};

/// ISO-8601 in UTC with millisecond precision, the one timestamp format of the API.
pub fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Serde of a timestamp in the API's format ([`iso`]); reads any RFC 3339 date-time.
pub mod iso_format {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::iso(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        DateTime::<Utc>::deserialize(d)
    }
}
