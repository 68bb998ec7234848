//! Wire models of `/api/webhooks`: a webhook as listed, as created (with its secret, shown that once), the
//! registration request (for the schema only: `decode.rs` reads it), and the event types.

use poem_openapi::{Enum, Object};
use uuid::Uuid;

use super::types::Timestamp;
use crate::domain::{Webhook, WebhookEventType};

/// An event type a webhook may receive.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "WebhookEventType")]
pub enum WebhookEventTypeBody {
    #[oai(rename = "session.created")]
    SessionCreated,
    #[oai(rename = "message.created")]
    MessageCreated,
    #[oai(rename = "message.reply")]
    MessageReply,
    #[oai(rename = "session.warning")]
    SessionWarning,
    #[oai(rename = "session.expired")]
    SessionExpired,
    #[oai(rename = "session.deleted")]
    SessionDeleted,
}

impl From<WebhookEventType> for WebhookEventTypeBody {
    fn from(t: WebhookEventType) -> Self {
        match t {
            WebhookEventType::SessionCreated => Self::SessionCreated,
            WebhookEventType::MessageCreated => Self::MessageCreated,
            WebhookEventType::MessageReply => Self::MessageReply,
            WebhookEventType::SessionWarning => Self::SessionWarning,
            WebhookEventType::SessionExpired => Self::SessionExpired,
            WebhookEventType::SessionDeleted => Self::SessionDeleted,
        }
    }
}

/// A registered webhook. Its secret is not shown again after registration.
#[derive(Object, Debug, Clone)]
#[oai(rename = "Webhook", rename_all = "camelCase")]
pub struct WebhookBody {
    pub id: Uuid,
    pub url: String,
    /// The event types it receives.
    pub events: Vec<WebhookEventTypeBody>,
    pub created_at: Timestamp,
}

/// A webhook just registered, with the secret its deliveries are signed with: keep it, it is shown only now.
#[derive(Object, Debug, Clone)]
#[oai(rename = "CreatedWebhook", rename_all = "camelCase")]
pub struct CreatedWebhookBody {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<WebhookEventTypeBody>,
    /// `whsec_` and the base64 of the signing key (Standard Webhooks).
    pub secret: String,
    pub created_at: Timestamp,
}

#[derive(Object, Debug, Clone)]
#[oai(rename = "WebhookList", rename_all = "camelCase")]
pub struct WebhookListBody {
    pub webhooks: Vec<WebhookBody>,
    pub total: u64,
}

#[derive(Object, Debug, Clone)]
#[oai(rename = "CreateWebhookRequest", rename_all = "camelCase")]
pub struct CreateWebhookRequest {
    /// An http or https URL, under the egress policy of agent backends.
    #[oai(validator(
        pattern = r"^https?://([A-Za-z]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z]([A-Za-z0-9-]*[A-Za-z0-9])?)*|(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3})(:[0-9]{1,4})?(/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)*(\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?$"
    ))]
    pub url: String,
    /// The event types to receive; all of them when absent.
    #[oai(validator(min_items = 1))]
    pub events: Option<Vec<WebhookEventTypeBody>>,
}

fn types(w: &Webhook) -> Vec<WebhookEventTypeBody> {
    w.events.types().into_iter().map(Into::into).collect()
}

impl From<&Webhook> for WebhookBody {
    fn from(w: &Webhook) -> Self {
        Self {
            id: w.id,
            url: w.url.clone(),
            events: types(w),
            created_at: Timestamp(w.created_at),
        }
    }
}

impl From<&Webhook> for CreatedWebhookBody {
    fn from(w: &Webhook) -> Self {
        Self {
            id: w.id,
            url: w.url.clone(),
            events: types(w),
            secret: w.secret.clone(),
            created_at: Timestamp(w.created_at),
        }
    }
}
