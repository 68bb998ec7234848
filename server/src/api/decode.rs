//! Request bodies to the service's typed commands: JSON values read in the contract's check order, with the
//! contract's messages (missing fields before malformed UUIDs before unknown agents, ...).
//!
//! Bodies are read by hand rather than by a derive because that order and those messages are part of the wire
//! contract; the rules for single values (metadata, timeouts, content, attachments) are the domain's
//! (`domain::validate`).

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

use crate::domain::validate;
use crate::domain::{
    AgentBackend, EventFilter, OpenAiBackend, SessionError, TimeoutConfigPatch, WebhookEventType,
};
use crate::service::{CreateSession, NewAgent, NewWebhook, SendMessage, Transport};

fn as_object(body: Value) -> Result<Map<String, Value>, SessionError> {
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(SessionError::invalid("Request body must be a JSON object")),
    }
}

/// `createSession`: fields the agent lookup comes after are checked now and reported in their turn.
pub fn create_session(body: Value) -> Result<CreateSession, SessionError> {
    let mut map = as_object(body)?;
    // Like the reference, an empty string or null counts as missing.
    let present = |v: Option<&Value>| {
        !matches!(v, None | Some(Value::Null)) && v != Some(&Value::String(String::new()))
    };
    if !present(map.get("agentId")) || !present(map.get("userId")) {
        return Err(SessionError::invalid(
            "Missing required fields: agentId, userId",
        ));
    }
    let uuid_field = |map: &Map<String, Value>, field: &str| {
        map.get(field)
            .and_then(Value::as_str)
            .and_then(validate::parse_uuid)
            .ok_or_else(|| {
                SessionError::invalid_field(
                    format!("Invalid UUID format for field '{field}'"),
                    field,
                )
            })
    };
    Ok(CreateSession {
        agent_id: uuid_field(&map, "agentId")?,
        user_id: uuid_field(&map, "userId")?,
        metadata: validate::metadata(map.remove("metadata")),
        timeout: validate::timeout_patch(map.remove("timeoutConfig"), "timeoutConfig"),
    })
}

/// The PATCH /timeout body: the same object as create's `timeoutConfig`, every field optional.
pub fn timeout_patch(body: Value) -> Result<TimeoutConfigPatch, SessionError> {
    let map = as_object(body)?;
    validate::timeout_patch(Some(Value::Object(map)), "timeoutConfig")
}

/// `createAgent`.
pub fn new_agent(body: Value) -> Result<NewAgent, SessionError> {
    let mut map = as_object(body)?;
    let name = match map.get("name") {
        None | Some(Value::Null) => {
            return Err(SessionError::invalid_field(
                "Missing required field: name",
                "name",
            ))
        }
        Some(Value::String(s)) if validate::has_visible_char(s) => s.clone(),
        Some(_) => {
            return Err(SessionError::invalid_field(
                "name must be a non-empty string",
                "name",
            ))
        }
    };
    if name.contains('\0') {
        return Err(SessionError::invalid_field(
            "name must not contain NUL characters",
            "name",
        ));
    }
    // Counted as sent (the contract's maxLength), then stored without surrounding blanks.
    if name.chars().count() > validate::MAX_AGENT_NAME_CHARS {
        return Err(SessionError::invalid_field(
            format!(
                "name must be at most {} characters",
                validate::MAX_AGENT_NAME_CHARS
            ),
            "name",
        ));
    }
    let name = name.trim_matches(validate::is_blank_char).to_string();
    let backend = match map.remove("backend") {
        None => AgentBackend::Echo,
        Some(v) => backend(v)?,
    };
    let session_defaults =
        validate::timeout_patch(map.remove("sessionDefaults"), "sessionDefaults")?;
    Ok(NewAgent {
        name,
        backend,
        session_defaults,
    })
}

fn backend(value: Value) -> Result<AgentBackend, SessionError> {
    let map = match value {
        Value::Object(map) => map,
        _ => {
            return Err(SessionError::invalid_field(
                "backend must be an object",
                "backend",
            ))
        }
    };
    // Absent optional fields are None; present ones must be non-empty strings (null included is refused, as the
    // contract does not declare them nullable).
    let string = |name: &str, required: bool| -> Result<Option<String>, SessionError> {
        match map.get(name) {
            None if !required => Ok(None),
            Some(Value::String(s)) if !s.is_empty() && !s.contains('\0') => Ok(Some(s.clone())),
            _ => Err(SessionError::invalid_field(
                format!("backend.{name} must be a non-empty string"),
                &format!("backend.{name}"),
            )),
        }
    };
    let http_url = |name: &str| -> Result<String, SessionError> {
        let raw = string(name, true)?.unwrap_or_default();
        match is_http_url(&raw) {
            true => Ok(raw),
            false => Err(SessionError::invalid_field(
                format!("backend.{name} must be an http or https URL"),
                &format!("backend.{name}"),
            )),
        }
    };
    match map.get("type").and_then(Value::as_str) {
        Some("echo") => Ok(AgentBackend::Echo),
        Some("webhook") => Ok(AgentBackend::Webhook {
            url: http_url("url")?,
        }),
        Some("openai") => Ok(AgentBackend::OpenAi(OpenAiBackend {
            base_url: http_url("baseUrl")?,
            model: string("model", true)?.unwrap_or_default(),
            api_key_env: string("apiKeyEnv", false)?,
            system_prompt: string("systemPrompt", false)?,
        })),
        _ => Err(SessionError::invalid_field(
            "backend.type must be one of: echo, webhook, openai",
            "backend.type",
        )),
    }
}

/// `sendMessage`: transport and content type now; the rest is reported after the session lookup.
pub fn send_message(body: Value) -> Result<SendMessage, SessionError> {
    let mut map = as_object(body)?;
    let transport = match (map.get("transport"), map.get("mode")) {
        (Some(t), _) => match t.as_str() {
            Some("websocket") => Transport::WebSocket,
            Some("http") => Transport::Http,
            Some("sse") => Transport::Sse,
            _ => {
                return Err(SessionError::invalid_field(
                    "Invalid transport: must be one of http, sse, websocket",
                    "transport",
                ))
            }
        },
        // The legacy alias: sync = http, stream = sse.
        (None, Some(m)) => match m.as_str() {
            Some("websocket") => Transport::WebSocket,
            Some("sync") => Transport::Http,
            Some("stream") => Transport::Sse,
            _ => {
                return Err(SessionError::invalid_field(
                    "Invalid mode: must be one of sync, stream, websocket",
                    "mode",
                ))
            }
        },
        (None, None) => Transport::WebSocket,
    };
    let content = match map.remove("content") {
        Some(Value::String(s)) => s,
        _ => {
            return Err(SessionError::invalid_field(
                "Content is required and must be a string",
                "content",
            ))
        }
    };
    Ok(SendMessage {
        transport,
        content: validate::content(&content).map(|()| content),
        metadata: validate::metadata(map.remove("metadata")),
        attachments: validate::attachments(map.remove("attachments")),
    })
}

/// `createWebhook`: `url` (an http or https URL), then `events` (absent: every type).
pub fn new_webhook(body: Value) -> Result<NewWebhook, SessionError> {
    let map = as_object(body)?;
    let url = match map.get("url") {
        None | Some(Value::Null) => {
            return Err(SessionError::invalid_field(
                "Missing required field: url",
                "url",
            ))
        }
        Some(Value::String(s)) if is_http_url(s) => s.clone(),
        Some(_) => {
            return Err(SessionError::invalid_field(
                "url must be an http or https URL",
                "url",
            ))
        }
    };
    let events = match map.get("events") {
        None => EventFilter::all(),
        Some(Value::Array(names)) => {
            let mut types = Vec::with_capacity(names.len());
            for name in names {
                let known = name.as_str().and_then(WebhookEventType::parse);
                types.push(known.ok_or_else(|| unknown_event_type(name))?);
            }
            let filter = EventFilter::of(types);
            if filter.is_empty() {
                return Err(SessionError::invalid_field(
                    "events must name at least one event type (leave it out for all of them)",
                    "events",
                ));
            }
            filter
        }
        Some(_) => {
            return Err(SessionError::invalid_field(
                "events must be an array of event types",
                "events",
            ))
        }
    };
    Ok(NewWebhook { url, events })
}

fn unknown_event_type(name: &Value) -> SessionError {
    let listed: Vec<&str> = WebhookEventType::ALL.iter().map(|t| t.as_str()).collect();
    let shown = match name {
        Value::String(s) => format!("'{}'", s.chars().take(50).collect::<String>()),
        _ => "a value that is not a string".to_string(),
    };
    SessionError::invalid_field(
        format!(
            "events: {shown} is not an event type (expected one of: {})",
            listed.join(", ")
        ),
        "events",
    )
}

/// The URLs the server calls (agent backends, webhooks), as openapi.yaml states them: http or https; a host name
/// whose labels start with a letter, an IPv4 address or a bracketed IPv6 one; a port up to 65535; a path and a query of URL
/// characters (RFC 3986's, `%` escapes included). The server accepts exactly these, so that the contract says
/// what is refused.
pub(crate) const HTTP_URL_PATTERN: &str = concat!(
    r"^https?://",
    r"([A-Za-z]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z]([A-Za-z0-9-]*[A-Za-z0-9])?)*",
    r"|(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}",
    r"|\[(",
    r"([0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}",
    r"|([0-9A-Fa-f]{1,4}:){1,7}:",
    r"|([0-9A-Fa-f]{1,4}:){1,6}:[0-9A-Fa-f]{1,4}",
    r"|([0-9A-Fa-f]{1,4}:){1,5}(:[0-9A-Fa-f]{1,4}){1,2}",
    r"|([0-9A-Fa-f]{1,4}:){1,4}(:[0-9A-Fa-f]{1,4}){1,3}",
    r"|([0-9A-Fa-f]{1,4}:){1,3}(:[0-9A-Fa-f]{1,4}){1,4}",
    r"|([0-9A-Fa-f]{1,4}:){1,2}(:[0-9A-Fa-f]{1,4}){1,5}",
    r"|[0-9A-Fa-f]{1,4}:(:[0-9A-Fa-f]{1,4}){1,6}",
    r"|:((:[0-9A-Fa-f]{1,4}){1,7}|:)",
    r"|::([Ff]{4}(:0{1,4})?:)?(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}",
    r"|([0-9A-Fa-f]{1,4}:){1,4}:(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}",
    r")\])",
    r"(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?",
    r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)*",
    r"(\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?$",
);

static HTTP_URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(HTTP_URL_PATTERN).expect("HTTP_URL_PATTERN is a valid regex"));

/// Whether `raw` is such a URL (and one the URL parser takes, which every match is).
fn is_http_url(raw: &str) -> bool {
    HTTP_URL.is_match(raw) && url::Url::parse(raw).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_are_checked_against_the_contract_pattern() {
        let spec: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../../../openapi.yaml")).unwrap();
        let schemas = &spec["components"]["schemas"];
        for (schema, field) in [
            ("CreateWebhookRequest", "url"),
            ("WebhookBackend", "url"),
            ("OpenAiBackend", "baseUrl"),
        ] {
            assert_eq!(
                schemas[schema]["properties"][field]["pattern"].as_str(),
                Some(HTTP_URL_PATTERN),
                "{schema}.{field}"
            );
        }
        for ok in [
            "http://localhost:8080/hook",
            "https://Hooks.Example.com/a/b.c?token=x&y=%20z",
            "http://127.0.0.1:9/",
            "http://127.0.0.1:65535/hook",
            "http://[::1]:8080/",
            "http://[::ffff:169.254.169.254]/latest",
            "https://api.openai.com/v1",
        ] {
            assert!(is_http_url(ok), "{ok}");
        }
        for bad in [
            "ftp://x",
            "http://x/a b",
            "http://x/*\0",
            "http://1.2.3.4.5/",
            "http://a.1/",
            "http://[:::]/",
            "http://x:99999/",
            "http://x:65536/",
            "http://x/#frag",
            "http://user@x/",
        ] {
            assert!(!is_http_url(bad), "{bad}");
        }
    }

    fn message(r: Result<impl std::fmt::Debug, SessionError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn create_checks_missing_before_format() {
        assert_eq!(
            message(create_session(json!({"agentId": "nope"}))),
            "Missing required fields: agentId, userId"
        );
        assert_eq!(
            message(create_session(json!({"agentId": "nope", "userId": "bad"}))),
            "Invalid UUID format for field 'agentId'"
        );
        let ok = "3c90c3cc-0d44-4b50-8888-8dd25736052a";
        assert_eq!(
            message(create_session(json!({"agentId": ok, "userId": 7}))),
            "Invalid UUID format for field 'userId'"
        );
        assert_eq!(
            message(create_session(
                json!({"agentId": ok, "userId": ok.replace('-', "")})
            )),
            "Invalid UUID format for field 'userId'"
        );
    }

    /// Errors of fields checked after the agent lookup are kept, not raised.
    #[test]
    fn create_keeps_later_errors_for_their_turn() {
        let ok = "3c90c3cc-0d44-4b50-8888-8dd25736052a";
        let c = create_session(json!({"agentId": ok, "userId": ok, "metadata": [1]})).unwrap();
        assert_eq!(message(c.metadata), "metadata must be an object");
        assert!(c.timeout.is_ok());
    }

    #[test]
    fn agent_backends_are_checked() {
        assert!(matches!(
            new_agent(json!({"name": "a"})).unwrap().backend,
            AgentBackend::Echo
        ));
        assert!(
            new_agent(json!({"name": "a", "backend": {"type": "webhook", "url": "ftp://x"}}))
                .is_err()
        );
        assert!(new_agent(
            json!({"name": "a", "backend": {"type": "openai", "baseUrl": "http://x"}})
        )
        .is_err());
        assert!(new_agent(json!({"name": ""})).is_err());
        assert!(new_agent(json!({"name": "a\0b"})).is_err());
    }

    #[test]
    fn transport_is_checked_before_content() {
        let e = send_message(json!({"transport": "pigeon"})).unwrap_err();
        assert!(e.to_string().starts_with("Invalid transport"));
        let e = send_message(json!({"content": 5})).unwrap_err();
        assert_eq!(e.to_string(), "Content is required and must be a string");
        let transport = |body: Value| send_message(body).unwrap().transport;
        assert_eq!(
            transport(json!({"content": "x", "mode": "sync"})),
            Transport::Http
        );
        assert_eq!(
            transport(json!({"content": "x", "mode": "stream"})),
            Transport::Sse
        );
        assert_eq!(transport(json!({"content": "x"})), Transport::WebSocket);
        // A NUL is an error of the content, reported after the session lookup.
        assert!(send_message(json!({"content": "a\0b"}))
            .unwrap()
            .content
            .is_err());
    }
}
