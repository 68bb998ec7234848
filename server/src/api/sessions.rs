//! Handlers of `/api/messaging/sessions…`: parse the request, call `SessionService`, shape the response.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::{ApiResponse, OpenApi};
use uuid::Uuid;

use super::access::{Authorized, OperatorOnly, OwnSession};
use super::body::JsonBody;
use super::decode;
use super::error::{
    ApiError, CreateSessionErrors, DeleteErrors, Failure, HealthErrors, ListErrors, LookupErrors,
    RenewErrors, TokenErrors, UpdateTimeoutErrors,
};
use super::idempotency::{self, Answer, Keep, KeyHeader, Scope};
use super::json_out::{JsonBytes, JsonOut};
use super::models::{
    CreateSessionRequest, DeleteBody, HealthBody, SessionBody, SessionListBody, SessionTokenBody,
    TimeoutConfigUpdate,
};
use super::types::Timestamp;
use super::ApiTags;
use crate::auth::{Access, IssuedToken};
use crate::domain::{Session, StoredResponse};
use crate::service::{CreateSession, SessionService, SessionView};
use crate::store::SessionFilter;

type Service<'a> = Data<&'a Arc<SessionService>>;
type AccessData<'a> = Data<&'a Arc<Access>>;

/// Default page size of `listSessions`.
const DEFAULT_LIST_LIMIT: u32 = 100;

#[derive(ApiResponse)]
pub enum CreatedSession {
    /// Session created (or, to a retry under the same `Idempotency-Key`, the first answer again).
    #[oai(status = 201)]
    Created(JsonBytes<SessionBody>),
}

impl Keep for JsonBytes<SessionBody> {
    fn keep(&self) -> StoredResponse {
        StoredResponse {
            status: 201,
            body: self.text(),
        }
    }
}

pub(super) fn session(view: SessionView) -> JsonOut<SessionBody> {
    JsonOut(SessionBody::from_view(view))
}

fn token(access: &Access, session: &Session) -> Result<IssuedToken, ApiError> {
    access
        .tokens()
        .issue(session)
        .map_err(|e| ApiError::internal(&e))
}

/// createSession's work once the request is decoded: the session stored, its first token issued, the answer's
/// body (the fast lane's and the stack's).
pub(super) async fn created(
    service: Arc<SessionService>,
    access: Arc<Access>,
    command: CreateSession,
) -> Result<JsonBytes<SessionBody>, ApiError> {
    let view = service.create(command).await?;
    let issued = token(&access, &view.session)?;
    let mut body = SessionBody::from_view(view);
    body.session_token = Some(issued.token);
    body.session_token_expires_at = Some(Timestamp(issued.expires_at));
    JsonBytes::new(&body)
}

pub struct SessionsApi;

#[OpenApi(tag = "ApiTags::Sessions")]
impl SessionsApi {
    /// Health of the sessions subsystem.
    #[oai(
        path = "/api/messaging/sessions/health",
        method = "get",
        operation_id = "getSessionsHealth"
    )]
    async fn health(
        &self,
        service: Service<'_>,
    ) -> Result<JsonOut<HealthBody>, Failure<HealthErrors>> {
        Ok(JsonOut(service.health().await?.into()))
    }

    /// Create a new session with an agent.
    ///
    /// Out-of-range timeout values are clamped, never rejected.
    #[oai(
        path = "/api/messaging/sessions",
        method = "post",
        operation_id = "createSession"
    )]
    async fn create(
        &self,
        auth: Authorized<OperatorOnly>,
        service: Service<'_>,
        access: AccessData<'_>,
        /// Makes the request safe to retry: within 24 hours, the same key with the same body answers the
        /// first response again (the same session) instead of creating another.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: KeyHeader,
        body: JsonBody<CreateSessionRequest>,
    ) -> Result<CreatedSession, Failure<CreateSessionErrors>> {
        let header = idempotency_key.0.as_deref();
        let keyed = idempotency::request(
            &access,
            &auth.principal,
            Scope::CreateSession,
            header,
            &body.value,
        )?;
        let command = decode::create_session(body.value)?;
        let (service, access) = (service.0.clone(), access.0.clone());
        let work = created(service.clone(), access, command);
        Ok(CreatedSession::Created(
            match idempotency::run(&service, keyed, work).await? {
                Answer::Fresh(body) => body,
                Answer::Replayed(kept) => JsonBytes::replayed(kept.body),
            },
        ))
    }

    /// List active sessions, newest first.
    #[oai(
        path = "/api/messaging/sessions",
        method = "get",
        operation_id = "listSessions"
    )]
    async fn list(
        &self,
        _auth: Authorized<OperatorOnly>,
        service: Service<'_>,
        /// Only sessions with this agent.
        #[oai(name = "agentId")]
        agent_id: Query<Option<Uuid>>,
        /// Only sessions of this user.
        #[oai(name = "userId")]
        user_id: Query<Option<Uuid>>,
        /// Page size (1 to 1000, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// Sessions to skip (default 0), at most 10^15.
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        offset: Query<Option<u64>>,
    ) -> Result<JsonOut<SessionListBody>, Failure<ListErrors>> {
        let filter = SessionFilter {
            agent_id: agent_id.0,
            user_id: user_id.0,
        };
        let page = service
            .list(
                filter,
                limit.0.unwrap_or(DEFAULT_LIST_LIMIT),
                offset.0.unwrap_or(0),
            )
            .await?;
        Ok(JsonOut(page.into()))
    }

    /// Get a session.
    #[oai(
        path = "/api/messaging/sessions/:sessionId",
        method = "get",
        operation_id = "getSession"
    )]
    async fn get(
        &self,
        _auth: Authorized<OwnSession>,
        service: Service<'_>,
        #[oai(name = "sessionId")] session_id: Path<String>,
    ) -> Result<JsonOut<SessionBody>, Failure<LookupErrors>> {
        Ok(session(service.get(&session_id).await?))
    }

    /// Delete a session (also an expired one that is still retained).
    #[oai(
        path = "/api/messaging/sessions/:sessionId",
        method = "delete",
        operation_id = "deleteSession"
    )]
    async fn delete(
        &self,
        _auth: Authorized<OwnSession>,
        service: Service<'_>,
        #[oai(name = "sessionId")] session_id: Path<String>,
    ) -> Result<JsonOut<DeleteBody>, Failure<DeleteErrors>> {
        service.delete(&session_id).await?;
        Ok(JsonOut(DeleteBody::new(format!(
            "Session {} deleted successfully",
            session_id.0
        ))))
    }

    /// Renew a session now, even when its `autoRenew` is off.
    #[oai(
        path = "/api/messaging/sessions/:sessionId/renew",
        method = "post",
        operation_id = "renewSession"
    )]
    async fn renew(
        &self,
        _auth: Authorized<OwnSession>,
        service: Service<'_>,
        #[oai(name = "sessionId")] session_id: Path<String>,
    ) -> Result<JsonOut<SessionBody>, Failure<RenewErrors>> {
        Ok(session(service.renew(&session_id).await?))
    }

    /// Change a session's timeout configuration; omitted fields keep their current values.
    #[oai(
        path = "/api/messaging/sessions/:sessionId/timeout",
        method = "patch",
        operation_id = "updateSessionTimeout"
    )]
    async fn update_timeout(
        &self,
        _auth: Authorized<OperatorOnly>,
        service: Service<'_>,
        #[oai(name = "sessionId")] session_id: Path<String>,
        body: JsonBody<TimeoutConfigUpdate>,
    ) -> Result<JsonOut<SessionBody>, Failure<UpdateTimeoutErrors>> {
        Ok(session(
            service
                .update_timeout(&session_id, decode::timeout_patch(body.value)?)
                .await?,
        ))
    }

    /// Keep a session alive: renews it when `autoRenew` is on, otherwise records the activity.
    #[oai(
        path = "/api/messaging/sessions/:sessionId/heartbeat",
        method = "post",
        operation_id = "sessionHeartbeat"
    )]
    async fn heartbeat(
        &self,
        _auth: Authorized<OwnSession>,
        service: Service<'_>,
        #[oai(name = "sessionId")] session_id: Path<String>,
    ) -> Result<JsonOut<SessionBody>, Failure<LookupErrors>> {
        Ok(session(service.heartbeat(&session_id).await?))
    }

    /// Issue a fresh session token for an active session (API key only), e.g. for a client whose token expired.
    #[oai(
        path = "/api/messaging/sessions/:sessionId/token",
        method = "post",
        operation_id = "issueSessionToken"
    )]
    async fn issue_token(
        &self,
        _auth: Authorized<OperatorOnly>,
        service: Service<'_>,
        access: AccessData<'_>,
        #[oai(name = "sessionId")] session_id: Path<String>,
    ) -> Result<JsonOut<SessionTokenBody>, Failure<TokenErrors>> {
        let view = service.get(&session_id).await?;
        let issued = token(&access, &view.session)?;
        Ok(JsonOut(SessionTokenBody {
            session_id: view.session.id,
            session_token: issued.token,
            session_token_expires_at: Timestamp(issued.expires_at),
        }))
    }
}
