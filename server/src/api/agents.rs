//! Handlers of `/api/agents`: the agents sessions talk to.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::access::{Authorized, OperatorOnly};
use super::body::JsonBody;
use super::decode;
use super::error::{
    AgentListErrors, AgentLookupErrors, CreateAgentErrors, DeleteAgentErrors, Failure,
};
use super::models::{AgentBody, AgentListBody, CreateAgentRequest, DeleteBody};
use super::ApiTags;
use crate::service::SessionService;

type Service<'a> = Data<&'a Arc<SessionService>>;

#[derive(ApiResponse)]
pub enum CreatedAgent {
    /// Agent created.
    #[oai(status = 201)]
    Created(Json<AgentBody>),
}

pub struct AgentsApi;

#[OpenApi(tag = "ApiTags::Agents")]
impl AgentsApi {
    /// List agents, oldest first.
    #[oai(path = "/api/agents", method = "get", operation_id = "listAgents")]
    async fn list(
        &self,
        _auth: Authorized<OperatorOnly>,
        service: Service<'_>,
    ) -> Result<Json<AgentListBody>, Failure<AgentListErrors>> {
        let agents: Vec<AgentBody> = service
            .list_agents()
            .await?
            .iter()
            .map(Into::into)
            .collect();
        Ok(Json(AgentListBody {
            total: agents.len() as u64,
            agents,
        }))
    }

    /// Create an agent.
    #[oai(path = "/api/agents", method = "post", operation_id = "createAgent")]
    async fn create(
        &self,
        _auth: Authorized<OperatorOnly>,
        service: Service<'_>,
        body: JsonBody<CreateAgentRequest>,
    ) -> Result<CreatedAgent, Failure<CreateAgentErrors>> {
        let agent = service.create_agent(decode::new_agent(body.value)?).await?;
        Ok(CreatedAgent::Created(Json((&agent).into())))
    }

    /// Get an agent.
    #[oai(
        path = "/api/agents/:agentId",
        method = "get",
        operation_id = "getAgent"
    )]
    async fn get(
        &self,
        _auth: Authorized<OperatorOnly>,
        service: Service<'_>,
        #[oai(name = "agentId")] agent_id: Path<String>,
    ) -> Result<Json<AgentBody>, Failure<AgentLookupErrors>> {
        Ok(Json((&service.get_agent(&agent_id).await?).into()))
    }

    /// Delete an agent and its sessions; refused (409 `AGENT_IN_USE`) while some of them are active.
    #[oai(
        path = "/api/agents/:agentId",
        method = "delete",
        operation_id = "deleteAgent"
    )]
    async fn delete(
        &self,
        _auth: Authorized<OperatorOnly>,
        service: Service<'_>,
        #[oai(name = "agentId")] agent_id: Path<String>,
    ) -> Result<Json<DeleteBody>, Failure<DeleteAgentErrors>> {
        service.delete_agent(&agent_id).await?;
        Ok(Json(DeleteBody::new(format!(
            "Agent {} deleted successfully",
            agent_id.0
        ))))
    }
}
