//! Handlers of `/api/webhooks`: registering, listing and deleting the receivers of outbound events. An API key
//! only: a session token gets 403.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::access::{Authorized, OperatorOnly};
use super::body::JsonBody;
use super::decode;
use super::error::{CreateWebhookErrors, DeleteWebhookErrors, Failure, WebhookListErrors};
use super::models::DeleteBody;
use super::webhook_models::{CreateWebhookRequest, CreatedWebhookBody, WebhookListBody};
use super::ApiTags;
use crate::service::SessionService;

type Service<'a> = Data<&'a Arc<SessionService>>;

#[derive(ApiResponse)]
pub enum CreatedWebhook {
    /// Webhook registered; `secret` is shown only here.
    #[oai(status = 201)]
    Created(Json<CreatedWebhookBody>),
}

pub struct WebhooksApi;

#[OpenApi(tag = "ApiTags::Webhooks")]
impl WebhooksApi {
    /// Register a webhook: matching events are POSTed to its URL, signed.
    #[oai(
        path = "/api/webhooks",
        method = "post",
        operation_id = "createWebhook"
    )]
    async fn create(
        &self,
        _auth: Authorized<OperatorOnly>,
        service: Service<'_>,
        body: JsonBody<CreateWebhookRequest>,
    ) -> Result<CreatedWebhook, Failure<CreateWebhookErrors>> {
        let webhook = service
            .create_webhook(decode::new_webhook(body.value)?)
            .await?;
        Ok(CreatedWebhook::Created(Json((&webhook).into())))
    }

    /// List webhooks, oldest first (without their secrets).
    #[oai(path = "/api/webhooks", method = "get", operation_id = "listWebhooks")]
    async fn list(
        &self,
        _auth: Authorized<OperatorOnly>,
        service: Service<'_>,
    ) -> Result<Json<WebhookListBody>, Failure<WebhookListErrors>> {
        let webhooks: Vec<_> = service
            .list_webhooks()
            .await?
            .iter()
            .map(Into::into)
            .collect();
        Ok(Json(WebhookListBody {
            total: webhooks.len() as u64,
            webhooks,
        }))
    }

    /// Delete a webhook; deliveries still queued for it are dropped.
    #[oai(
        path = "/api/webhooks/:webhookId",
        method = "delete",
        operation_id = "deleteWebhook"
    )]
    async fn delete(
        &self,
        _auth: Authorized<OperatorOnly>,
        service: Service<'_>,
        #[oai(name = "webhookId")] webhook_id: Path<String>,
    ) -> Result<Json<DeleteBody>, Failure<DeleteWebhookErrors>> {
        service.delete_webhook(&webhook_id).await?;
        Ok(Json(DeleteBody::new(format!(
            "Webhook {} deleted successfully",
            webhook_id.0
        ))))
    }
}
