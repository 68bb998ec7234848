//! Owns the proof that the event payload schemas of `openapi.yaml` (`x-event-payloads` of `SessionStreamEvent` and
//! `MessageStreamEvent`) say what the server sends: every event name has a payload schema, and every payload read
//! raw off both event streams has the required properties, no undocumented ones (nested objects included), and
//! decodes into the SDK type generated from that schema.
//!
//! The spec-agreement test cannot see these schemas (an event's `data` is JSON text on the wire), and schemathesis
//! only checks that `data` is a string, so without this test they could drift from the server unnoticed.

use std::collections::BTreeSet;

use agent_sessions::types;
use serde_json::Value;

use crate::support::*;

fn contract() -> Value {
    serde_yaml::from_str(include_str!("../openapi.yaml")).expect("openapi.yaml parses")
}

/// The component a `$ref` names.
fn component<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let name = reference
        .strip_prefix("#/components/schemas/")
        .unwrap_or_else(|| panic!("not a schema reference: {reference}"));
    &doc["components"]["schemas"][name]
}

/// Event name -> payload component name, from the `x-event-payloads` of an event schema.
fn payloads(doc: &Value, event_schema: &str) -> Vec<(String, String)> {
    let map = doc["components"]["schemas"][event_schema]["x-event-payloads"]
        .as_object()
        .unwrap_or_else(|| panic!("{event_schema} has no x-event-payloads"));
    map.iter()
        .map(|(event, schema)| {
            let reference = schema["$ref"].as_str().expect("a $ref");
            let name = reference.rsplit('/').next().unwrap_or_default();
            (event.clone(), name.to_string())
        })
        .collect()
}

/// Where `value` departs from `schema`: missing required properties and undocumented ones, in objects at any
/// depth. Types and formats are left to the generated types, which the payloads must decode into.
fn departures(doc: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    if let Some(reference) = schema["$ref"].as_str() {
        return departures(doc, component(doc, reference), value, at, out);
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        departures(doc, part, value, at, out);
    }
    match value {
        Value::Object(fields) => {
            let Some(properties) = schema["properties"].as_object() else {
                return; // a free-form object (metadata, details)
            };
            for required in schema["required"].as_array().into_iter().flatten() {
                let name = required.as_str().unwrap_or_default();
                if !fields.contains_key(name) {
                    out.push(format!("{at}: required property '{name}' is missing"));
                }
            }
            for (name, field) in fields {
                match properties.get(name) {
                    Some(property) => {
                        departures(doc, property, field, &format!("{at}.{name}"), out)
                    }
                    None => out.push(format!("{at}: property '{name}' is not in the schema")),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                departures(doc, &schema["items"], item, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes a payload into the SDK type generated from its schema.
fn decode(component: &str, data: &str) -> Result<(), serde_json::Error> {
    fn as_type<T: serde::de::DeserializeOwned>(data: &str) -> Result<(), serde_json::Error> {
        serde_json::from_str::<T>(data).map(drop)
    }
    match component {
        "Message" => as_type::<types::Message>(data),
        "ReplyChunk" => as_type::<types::ReplyChunk>(data),
        "SessionChange" => as_type::<types::SessionChange>(data),
        "ExpiryWarning" => as_type::<types::ExpiryWarning>(data),
        "SessionExpired" => as_type::<types::SessionExpired>(data),
        "SessionDeleted" => as_type::<types::SessionDeleted>(data),
        "ReplayGap" => as_type::<types::ReplayGap>(data),
        "ReconnectNotice" => as_type::<types::ReconnectNotice>(data),
        "ExchangeDone" => as_type::<types::ExchangeDone>(data),
        "ExchangeError" => as_type::<types::ExchangeError>(data),
        other => panic!("no generated type listed for {other}: add it here"),
    }
}

/// `(event, data)` of each frame of a complete `text/event-stream` body; `message` when a frame names none.
fn frames(body: &str) -> Vec<(String, String)> {
    body.split("\n\n")
        .filter_map(|frame| {
            let (mut event, mut data) = (None, None);
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(v.to_string());
                }
            }
            Some((event.unwrap_or_else(|| "message".into()), data?))
        })
        .collect()
}

/// Checks every frame against the payload schema of its event name; returns the event names seen.
fn check(doc: &Value, event_schema: &str, body: &str) -> BTreeSet<String> {
    let schemas = payloads(doc, event_schema);
    let mut seen = BTreeSet::new();
    for (event, data) in frames(body) {
        let (_, name) = schemas
            .iter()
            .find(|(e, _)| *e == event)
            .unwrap_or_else(|| panic!("{event_schema}: event '{event}' has no payload schema"));
        let value: Value = serde_json::from_str(&data).expect("data is JSON");
        let mut out = Vec::new();
        let schema = serde_json::json!({ "$ref": format!("#/components/schemas/{name}") });
        departures(doc, &schema, &value, name, &mut out);
        assert!(out.is_empty(), "'{event}' event: {out:#?}\n{data}");
        if let Err(e) = decode(name, &data) {
            panic!("'{event}' event does not decode as types::{name}: {e}\n{data}");
        }
        seen.insert(event);
    }
    seen
}

/// The event names an enum schema lists.
fn names(doc: &Value, enum_schema: &str) -> BTreeSet<String> {
    let values = doc["components"]["schemas"][enum_schema]["enum"].as_array();
    values
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

async fn raw_events(ctx: &TestContext, id: &str) -> reqwest::Response {
    raw_events_after(ctx, id, None).await
}

/// The raw events stream, resumed after `last_event_id` if given.
async fn raw_events_after(
    ctx: &TestContext,
    id: &str,
    last_event_id: Option<i64>,
) -> reqwest::Response {
    let url = ctx.url(&format!("/api/messaging/sessions/{id}/events"));
    let mut request = reqwest::Client::new().get(url);
    if let Some(last) = last_event_id {
        request = request.header("Last-Event-ID", last.to_string());
    }
    let response = request.send().await.expect("the events stream opens");
    assert_eq!(response.status().as_u16(), 200);
    response
}

async fn raw_exchange(ctx: &TestContext, id: &str, content: &str) -> String {
    let url = ctx.url(&format!("/api/messaging/sessions/{id}/messages"));
    let body = serde_json::json!({ "content": content, "transport": "sse" });
    let response = reqwest::Client::new().post(url).json(&body).send().await;
    response
        .expect("sent")
        .text()
        .await
        .expect("the exchange ends")
}

async fn to_end(response: reqwest::Response) -> String {
    tokio::time::timeout(WAIT, response.text())
        .await
        .expect("the stream ends in time")
        .expect("the stream reads")
}

#[test]
fn every_event_name_has_a_payload_schema() {
    let doc = contract();
    for (event_schema, enum_schema) in [
        ("SessionStreamEvent", "SessionEventName"),
        ("MessageStreamEvent", "MessageStreamEventName"),
    ] {
        let listed: BTreeSet<String> = payloads(&doc, event_schema)
            .into_iter()
            .map(|(event, _)| event)
            .collect();
        assert_eq!(listed, names(&doc, enum_schema), "{event_schema}");
    }
}

#[tokio::test]
async fn every_payload_matches_its_schema_and_generated_type() {
    let doc = contract();
    let ctx = TestContext::new().await;
    let sweeper = ctx.sweeper();

    // One session through a message, a timeout change, a warning and its expiry.
    let id = ctx
        .create_session(Some(timeout_minutes(10.0))) // warning threshold 5
        .await
        .session_id
        .to_string();
    let events = raw_events(&ctx, &id).await;
    let exchange = raw_exchange(&ctx, &id, "Hello there").await;
    ctx.update_timeout(&id, timeout_minutes(10.0)).await;
    for minutes in [6, 5] {
        ctx.advance_minutes(minutes);
        let pass = sweeper.run_once(ctx.service.now()).await.expect("a pass");
        assert_eq!(pass.announced, 1, "the warning, then the expiry");
    }
    let mut seen = check(&doc, "SessionStreamEvent", &to_end(events).await);

    // Another, deleted while watched.
    let id = ctx.new_session_id(None).await;
    let events = raw_events(&ctx, &id).await;
    ctx.delete(&id).await;
    seen.extend(check(&doc, "SessionStreamEvent", &to_end(events).await));

    // One that keeps only its newest events, resumed from before them (then deleted, to end the stream).
    let small = TestContext::with_options(TestOptions {
        events_kept: 2,
        ..TestOptions::default()
    })
    .await;
    let id = small.new_session_id(None).await;
    small.send(&id, "one", types::TransportType::Http).await;
    small.send(&id, "two", types::TransportType::Http).await;
    let events = raw_events_after(&small, &id, Some(0)).await;
    small.delete(&id).await;
    seen.extend(check(&doc, "SessionStreamEvent", &to_end(events).await));

    // One open while its server stops.
    let id = small.new_session_id(None).await;
    let events = raw_events(&small, &id).await;
    small.stop().await;
    seen.extend(check(&doc, "SessionStreamEvent", &to_end(events).await));
    assert_eq!(
        seen,
        names(&doc, "SessionEventName"),
        "every event name seen"
    );

    // The sse transport: an answered exchange, and one whose agent cannot be reached.
    let mut seen = check(&doc, "MessageStreamEvent", &exchange);
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let id = ctx.session_of(types::AgentBackendInput::webhook(url)).await;
    let failed = raw_exchange(&ctx, &id, "Anyone there?").await;
    seen.extend(check(&doc, "MessageStreamEvent", &failed));
    assert_eq!(
        seen,
        names(&doc, "MessageStreamEventName"),
        "every event name seen"
    );
}
