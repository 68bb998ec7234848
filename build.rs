//! Generates the SDK (`$OUT_DIR/codegen.rs`) from `openapi.yaml` with progenitor, builder style:
//! `client.create_session().body(...).send().await`.
//!
//! progenitor types one success body per operation and cannot type `text/event-stream`, so responses that are
//! only an event stream are left out of what it sees, and an operation with no other success (the events
//! stream; the WebSocket feed, whose success is a 101 upgrade) is left out entirely. `client/` has hand-written,
//! typed methods for the events stream (`client/streams.rs`) and reads the WebSocket feed's messages.
//!
//! String constraints (`pattern`, `minLength`, `maxLength`) are left out of what progenitor sees too: it would
//! turn every constrained string into a validating newtype (`SendMessageRequestContent`), so that callers could
//! no longer write `content: "hi".into()`. The server checks them and answers 400 with the field named.

use std::path::Path;

use serde_json::Value;

const EVENT_STREAM: &str = "text/event-stream";

fn main() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.yaml");
    println!("cargo:rerun-if-changed={}", src.display());
    let text = std::fs::read_to_string(&src).expect("read openapi.yaml");
    let mut doc: Value = serde_yaml::from_str(&text).expect("openapi.yaml is valid YAML");
    let skipped = without_event_streams(&mut doc);
    without_string_constraints(&mut doc);
    let spec: openapiv3::OpenAPI =
        serde_json::from_value(doc).expect("openapi.yaml is a valid OpenAPI 3.0 document");
    let mut generator = progenitor::Generator::new(
        progenitor::GenerationSettings::default()
            .with_interface(progenitor::InterfaceStyle::Builder)
            .with_tag(progenitor::TagStyle::Merged)
            .with_derive("PartialEq"),
    );
    let tokens = generator
        .generate_tokens(&spec)
        .unwrap_or_else(|e| panic!("progenitor cannot generate the SDK from openapi.yaml: {e}"));
    let file = syn::parse2(tokens).expect("generated code parses");
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR is set")).join("codegen.rs");
    let mut code = prettyplease::unparse(&file);
    code.push_str(&format!(
        "\n/// Operations of `openapi.yaml` not generated here (event streams): see the hand-written methods.\n\
         pub const HAND_WRITTEN_OPERATIONS: &[&str] = &{skipped:?};\n"
    ));
    std::fs::write(out, code).expect("write codegen.rs");
}

/// Removes `pattern`, `minLength` and `maxLength` wherever they appear (they only ever constrain strings here).
fn without_string_constraints(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for key in ["pattern", "minLength", "maxLength"] {
                if map.get(key).is_some_and(|v| !v.is_object()) {
                    map.remove(key);
                }
            }
            map.values_mut().for_each(without_string_constraints);
        }
        Value::Array(items) => items.iter_mut().for_each(without_string_constraints),
        _ => {}
    }
}

/// Removes event-stream-only responses; removes operations left without a success response. Returns the
/// operationIds removed.
fn without_event_streams(doc: &mut Value) -> Vec<String> {
    let mut skipped = Vec::new();
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return skipped;
    };
    for item in paths.values_mut() {
        let Some(ops) = item.as_object_mut() else {
            continue;
        };
        ops.retain(|_, op| {
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                return true;
            };
            responses.retain(|_, r| {
                let content = r.get("content").and_then(Value::as_object);
                !content
                    .is_some_and(|c| !c.is_empty() && c.keys().all(|k| k.starts_with(EVENT_STREAM)))
            });
            let has_success = responses.keys().any(|status| status.starts_with('2'));
            if !has_success {
                if let Some(id) = op.get("operationId").and_then(Value::as_str) {
                    skipped.push(id.to_string());
                }
            }
            has_success
        });
    }
    skipped
}
