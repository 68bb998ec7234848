//! The one-shot commands: `sessions list|get|delete`, `agents list|create|delete`, `health`. Each makes its
//! API call and prints the answer (a table, or JSON with `--json`).

use agent_sessions::types;
use serde_json::json;

use crate::errors::CliError;
use crate::output::{self, outln};
use crate::{AgentsCommand, Backend, CreateAgentArgs, Global, SessionsCommand};

pub async fn health(global: &Global) -> Result<(), CliError> {
    let client = global.client()?;
    let health = client.get_sessions_health().send().await;
    let health = health.map_err(|e| CliError::api(global, "", e))?;
    if global.json {
        output::json(&*health);
    } else {
        output::health(&health);
    }
    Ok(())
}

pub async fn sessions(global: &Global, command: SessionsCommand) -> Result<(), CliError> {
    let client = global.client()?;
    match command {
        SessionsCommand::List {
            agent,
            user,
            limit,
            offset,
        } => {
            let mut call = client.list_sessions();
            if let Some(agent) = agent {
                call = call.agent_id(agent);
            }
            if let Some(user) = user {
                call = call.user_id(user);
            }
            if let Some(limit) = limit {
                call = call.limit(limit);
            }
            if let Some(offset) = offset {
                call = call.offset(offset);
            }
            let list = call.send().await;
            let list = list.map_err(|e| CliError::api(global, "", e))?;
            if global.json {
                output::json(&*list);
            } else {
                output::sessions(&list);
            }
        }
        SessionsCommand::Get { id } => {
            let session = client.get_session().session_id(&id).send().await;
            let what = format!("session {id}");
            let session = session.map_err(|e| CliError::api(global, &what, e))?;
            if global.json {
                output::json(&*session);
            } else {
                output::session(&session);
            }
        }
        SessionsCommand::Delete { id } => {
            let deleted = client.delete_session().session_id(&id).send().await;
            let what = format!("session {id}");
            let deleted = deleted.map_err(|e| CliError::api(global, &what, e))?;
            if global.json {
                output::json(&*deleted);
            } else {
                outln!("Deleted session {id}");
            }
        }
    }
    Ok(())
}

pub async fn agents(global: &Global, command: AgentsCommand) -> Result<(), CliError> {
    let client = global.client()?;
    match command {
        AgentsCommand::List => {
            let list = client.list_agents().send().await;
            let list = list.map_err(|e| CliError::api(global, "", e))?;
            if global.json {
                output::json(&*list);
            } else {
                output::agents(&list);
            }
        }
        AgentsCommand::Create(args) => {
            let request = create_request(&args)?;
            let agent = client.create_agent().body(request).send().await;
            let agent = agent.map_err(|e| CliError::api(global, "", e))?;
            if global.json {
                output::json(&*agent);
            } else {
                output::agent(&agent);
            }
        }
        AgentsCommand::Delete { id } => {
            let deleted = client.delete_agent().agent_id(&id).send().await;
            let what = format!("agent {id}");
            let deleted = deleted.map_err(|e| CliError::api(global, &what, e))?;
            if global.json {
                output::json(&*deleted);
            } else {
                outln!("Deleted agent {id}");
            }
        }
    }
    Ok(())
}

/// The request, built as the JSON the API documents: the generated type of a `oneOf` backend is awkward to
/// build by hand, and the server validates every field anyway.
fn create_request(args: &CreateAgentArgs) -> Result<types::CreateAgentRequest, CliError> {
    let backend = match args.backend {
        Backend::Echo => json!({"type": "echo"}),
        Backend::Webhook => json!({"type": "webhook", "url": args.webhook_url}),
        Backend::Openai => {
            let mut backend =
                json!({"type": "openai", "baseUrl": args.base_url, "model": args.model});
            if let Some(env) = &args.api_key_env {
                backend["apiKeyEnv"] = json!(env);
            }
            if let Some(prompt) = &args.system_prompt {
                backend["systemPrompt"] = json!(prompt);
            }
            backend
        }
    };
    let mut request = json!({"name": args.name, "backend": backend});
    if let Some(minutes) = args.session_timeout_minutes {
        request["sessionDefaults"] = json!({"timeoutMinutes": minutes});
    }
    serde_json::from_value(request).map_err(|e| CliError::usage(format!("invalid agent: {e}")))
}
