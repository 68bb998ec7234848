//! Registering, listing and deleting outbound webhooks. A URL passes the egress policy agent backends pass
//! (checked again before every delivery); the secret is made here and shown only in the answer to the
//! registration.

use uuid::Uuid;

use super::{NewWebhook, SessionService};
use crate::domain::validate;
use crate::domain::{SessionError, Webhook};
use crate::webhooks::signature;

impl SessionService {
    pub async fn create_webhook(&self, new: NewWebhook) -> Result<Webhook, SessionError> {
        self.backends
            .policy()
            .check_url("url", &new.url)
            .map_err(|refusal| SessionError::invalid_field(refusal.message, refusal.field))?;
        let secret = signature::new_secret().map_err(|e| {
            SessionError::Unavailable(format!("no randomness for a webhook secret: {e}"))
        })?;
        let webhook = Webhook {
            id: Uuid::new_v4(),
            url: new.url,
            events: new.events,
            secret,
            created_at: self.clock.now(),
        };
        self.store.insert_webhook(&webhook).await?;
        Ok(webhook)
    }

    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>, SessionError> {
        Ok(self.store.list_webhooks().await?)
    }

    /// Deletes a webhook with the deliveries still queued for it.
    pub async fn delete_webhook(&self, id: &str) -> Result<(), SessionError> {
        let not_found = || SessionError::WebhookNotFound(id.to_string());
        let uuid = validate::parse_uuid(id).ok_or_else(not_found)?;
        if self.store.delete_webhook(uuid).await? {
            Ok(())
        } else {
            Err(not_found())
        }
    }
}
