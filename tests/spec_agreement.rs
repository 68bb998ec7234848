//! Owns the proof that the server's generated OpenAPI spec agrees structurally with `openapi.yaml`.
//!
//! The SDK is generated from `openapi.yaml` while the server's spec comes from poem-openapi
//! types, so nothing but this comparison stops the two from drifting apart.

use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

const C: &str = "openapi.yaml";
const S: &str = "the server's spec";
const SIDES: [&str; 2] = [C, S];
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];
/// Keywords whose values must simply be equal; structured keywords get their own rules below.
#[rustfmt::skip]
const SCALAR_KEYS: [&str; 9] = [
    "type", "format", "pattern", "minimum", "maximum",
    "minLength", "maxLength", "minItems", "maxItems",
];
/// The only schema keywords that shape generated types and validation; everything else
/// (docs, examples, `x-*`, readOnly, ...) is deliberately invisible to the comparison.
#[rustfmt::skip]
const SCHEMA_KEYS: [&str; 20] = [
    "$ref", "allOf", "oneOf", "anyOf", "properties", "required", "enum", "items",
    "additionalProperties", "nullable", "discriminator", "type", "format", "pattern",
    "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems",
];

/// Every structural difference between the contract and the served spec, as human-readable lines.
pub fn diff_specs(contract: &Value, served: &Value) -> Vec<String> {
    let mut differ = Differ {
        roots: [contract, served],
        out: Vec::new(),
        seen: BTreeSet::new(),
    };
    differ.paths();
    differ.security_schemes();
    differ.out
}

struct Differ<'a> {
    roots: [&'a Value; 2],
    out: Vec<String>,
    /// Component pairs already compared: stops cycles, and reports a shared schema's
    /// differences once instead of once per operation that uses it.
    seen: BTreeSet<String>,
}

impl Differ<'_> {
    fn paths(&mut self) {
        let [pa, pb] = self.roots.map(|r| &r["paths"]);
        for path in self.sets("paths", "path {}", keys(pa), keys(pb)) {
            let items = [&pa[&path], &pb[&path]];
            let [ma, mb] = items.map(|item| {
                METHODS
                    .iter()
                    .filter(|m| item.get(**m).is_some())
                    .map(|m| m.to_uppercase())
                    .collect()
            });
            for method in self.sets(&format!("{path} methods"), "method {}", ma, mb) {
                self.operation(&format!("{method} {path}"), items, &method.to_lowercase());
            }
        }
    }

    fn operation(&mut self, ctx: &str, items: [&Value; 2], method: &str) {
        let ops = items.map(|item| &item[method]);
        self.scalar(
            ctx,
            "operationId",
            &ops[0]["operationId"],
            &ops[1]["operationId"],
        );

        let [pa, pb] = [0, 1].map(|side| self.params(side, ctx, items[side], ops[side]));
        let common = self.sets(
            &format!("{ctx} parameters"),
            "parameter {}",
            pa.keys().cloned().collect(),
            pb.keys().cloned().collect(),
        );
        for key in common {
            let (a, b) = (&pa[&key], &pb[&key]);
            let pctx = format!("{ctx} parameter {key}");
            self.flag(&pctx, "required", a, b);
            self.schema(&format!("schema of {pctx}"), &a["schema"], &b["schema"]);
        }

        let bctx = format!("{ctx} request body");
        let [ba, bb] = [0, 1].map(|side| self.deref(side, &bctx, &ops[side]["requestBody"]));
        if self.presence(ctx, "request body", &ba, &bb) {
            self.flag(&bctx, "required", &ba, &bb);
            self.content(&bctx, &ba["content"], &bb["content"]);
        }

        // Which credentials an operation takes: each alternative is a set of scheme names (scopes are not used).
        let [sa, sb] = ops.map(|op| {
            op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|alt| keys(alt).into_iter().collect::<Vec<_>>().join(" + "))
                .collect::<BTreeSet<String>>()
        });
        self.sets(&format!("{ctx} security"), "requirement {}", sa, sb);

        let [ra, rb] = ops.map(|op| &op["responses"]);
        for status in self.sets(&format!("{ctx} responses"), "status {}", keys(ra), keys(rb)) {
            let rctx = format!("{ctx} response {status}");
            let a = self.deref(0, &rctx, &ra[&status]);
            let b = self.deref(1, &rctx, &rb[&status]);
            self.content(&rctx, &a["content"], &b["content"]);
        }
    }

    /// The security schemes themselves: what each name means on the wire.
    fn security_schemes(&mut self) {
        let [a, b] = self.roots.map(|r| &r["components"]["securitySchemes"]);
        for name in self.sets("securitySchemes", "scheme {}", keys(a), keys(b)) {
            for key in ["type", "in", "name", "scheme", "bearerFormat"] {
                let ctx = format!("security scheme {name}");
                self.scalar(&ctx, key, &a[&name][key], &b[&name][key]);
            }
        }
    }

    /// Path-level parameters apply to every operation, and an operation may override them.
    fn params(
        &mut self,
        side: usize,
        ctx: &str,
        item: &Value,
        op: &Value,
    ) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        for list in [&item["parameters"], &op["parameters"]] {
            for p in list.as_array().into_iter().flatten() {
                let p = self.deref(side, &format!("{ctx} parameters"), p);
                let key = format!("'{}' ({})", show_raw(&p["name"]), show_raw(&p["in"]));
                out.insert(key, p);
            }
        }
        out
    }

    fn content(&mut self, ctx: &str, a: &Value, b: &Value) {
        let [ma, mb] = [a, b].map(|c| -> BTreeMap<String, &Value> {
            let entries = c.as_object().into_iter().flatten();
            entries
                .map(|(k, v)| (media_type(k), &v["schema"]))
                .collect()
        });
        let common = self.sets(
            ctx,
            "media type {}",
            ma.keys().cloned().collect(),
            mb.keys().cloned().collect(),
        );
        for mt in common {
            // Naming the media type only when it is not the usual one keeps messages short.
            let suffix = if mt == "application/json" {
                String::new()
            } else {
                format!(" [{mt}]")
            };
            self.schema(&format!("schema of {ctx}{suffix}"), ma[&mt], mb[&mt]);
        }
    }

    fn schema(&mut self, ctx: &str, a: &Value, b: &Value) {
        let (na, a) = self.resolve(0, ctx, a);
        let (nb, b) = self.resolve(1, ctx, b);
        let ctx = match (&na, &nb) {
            (Some(x), Some(y)) if x != y => format!("{ctx} ({x} / {y})"),
            (Some(x), _) | (None, Some(x)) => format!("{ctx} ({x})"),
            (None, None) => ctx.to_string(),
        };
        if let (Some(x), Some(y)) = (&na, &nb) {
            if !self.seen.insert(format!("{x}\0{y}\0{a}\0{b}")) {
                return;
            }
            if x != y {
                // SDK type names come from component names, so a rename is a breaking change.
                let line = format!("{ctx}: component name '{x}' in {C}, '{y}' in {S}");
                self.out.push(line);
            }
        }
        if !self.presence(&ctx, "schema", &a, &b) {
            return;
        }
        for key in SCALAR_KEYS {
            self.scalar(&ctx, key, &a[key], &b[key]);
        }
        self.flag(&ctx, "nullable", &a, &b);
        let [da, db] = [&a, &b].map(|s| &s["discriminator"]["propertyName"]);
        self.scalar(&ctx, "discriminator.propertyName", da, db);
        let [ra, rb] = [&a, &b].map(|s| elements(&s["required"], show_raw));
        self.sets(&ctx, "required entry '{}'", ra, rb);
        let [ea, eb] = [&a, &b].map(|s| elements(&s["enum"], show));
        self.sets(&ctx, "enum value {}", ea, eb);

        let [pa, pb] = [&a, &b].map(|s| &s["properties"]);
        for p in self.sets(&ctx, "property '{}'", keys(pa), keys(pb)) {
            self.schema(&format!("{ctx} property '{p}'"), &pa[&p], &pb[&p]);
        }
        if self.presence(&ctx, "items", &a["items"], &b["items"]) {
            self.schema(&format!("{ctx} items"), &a["items"], &b["items"]);
        }
        self.additional(&ctx, &a["additionalProperties"], &b["additionalProperties"]);
        for key in ["oneOf", "anyOf", "allOf"] {
            let [la, lb] = [&a, &b].map(|s| s[key].as_array().cloned().unwrap_or_default());
            if la.len() != lb.len() {
                let (x, y) = (la.len(), lb.len());
                self.out
                    .push(format!("{ctx}: {key} has {x} entries in {C}, {y} in {S}"));
            }
            for (i, (x, y)) in la.iter().zip(&lb).enumerate() {
                self.schema(&format!("{ctx} {key}[{i}]"), x, y);
            }
        }
    }

    /// `additionalProperties` has four spellings but only three meanings for generated code:
    /// unspecified, closed (`false`), and free-form (`true` or an empty schema).
    fn additional(&mut self, ctx: &str, a: &Value, b: &Value) {
        let class = |v: &Value| match v {
            Value::Null => "none",
            Value::Bool(false) => "false",
            Value::Bool(true) => "true",
            v if !meaningful(v) => "true",
            _ => "a schema",
        };
        match (class(a), class(b)) {
            ("a schema", "a schema") => self.schema(&format!("{ctx} additionalProperties"), a, b),
            (x, y) if x != y => {
                let line = format!("{ctx}: additionalProperties {x} in {C}, {y} in {S}");
                self.out.push(line);
            }
            _ => {}
        }
    }

    /// Unwraps `$ref` and poem-openapi's `allOf: [{$ref}, {description}]` wrapper, returning the
    /// first component name met and the effective schema.
    fn resolve(&mut self, side: usize, ctx: &str, schema: &Value) -> (Option<String>, Value) {
        let mut name = None;
        let mut cur = schema.clone();
        // Bounded so that a `$ref` pointing at itself cannot loop forever.
        for _ in 0..32 {
            let Some(obj) = cur.as_object() else { break };
            // Siblings of `$ref`/`allOf` (e.g. `nullable`) still apply to the unwrapped schema.
            let mut rest: Map<String, Value> = obj
                .iter()
                .filter(|(k, _)| SCHEMA_KEYS.contains(&k.as_str()) && *k != "$ref" && *k != "allOf")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let next = if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
                let target = r
                    .strip_prefix('#')
                    .and_then(|p| self.roots[side].pointer(p));
                let Some(target) = target else {
                    self.out.push(format!(
                        "{ctx}: cannot resolve $ref '{r}' in {}",
                        SIDES[side]
                    ));
                    return (name, Value::Null);
                };
                name.get_or_insert_with(|| r.rsplit('/').next().unwrap_or(r).to_string());
                target.clone()
            } else if let Some(all) = obj.get("allOf").and_then(Value::as_array) {
                let mut kept: Vec<Value> = all.iter().filter(|e| meaningful(e)).cloned().collect();
                if kept.len() > 1 {
                    rest.insert("allOf".into(), Value::Array(kept));
                    return (name, Value::Object(rest));
                }
                kept.pop().unwrap_or_else(|| json!({}))
            } else {
                break;
            };
            cur = match next {
                Value::Object(mut inner) => {
                    inner.extend(rest);
                    Value::Object(inner)
                }
                other => other,
            };
        }
        (name, cur)
    }

    /// Follows local `$ref`s of parameters, request bodies and responses (the contract shares them under
    /// `components/parameters` and `components/responses`). A `$ref` that leads nowhere is reported as such:
    /// otherwise a misspelt shared response would only show up as a response without a body.
    fn deref(&mut self, side: usize, ctx: &str, v: &Value) -> Value {
        let mut cur = v;
        // Bounded, as in `resolve`, so that a `$ref` cycle cannot loop forever.
        for _ in 0..32 {
            let Some(r) = cur["$ref"].as_str() else { break };
            match r
                .strip_prefix('#')
                .and_then(|p| self.roots[side].pointer(p))
            {
                Some(target) => cur = target,
                None => {
                    let line = format!("{ctx}: cannot resolve $ref '{r}' in {}", SIDES[side]);
                    self.out.push(line);
                    return Value::Null;
                }
            }
        }
        cur.clone()
    }

    /// Reports a thing present on only one side; true when both sides have it.
    fn presence(&mut self, ctx: &str, what: &str, a: &Value, b: &Value) -> bool {
        match (a.is_null(), b.is_null()) {
            (false, false) => true,
            (true, true) => false,
            (missing_in_served, _) => {
                let (has, lacks) = if missing_in_served { (1, 0) } else { (0, 1) };
                self.out.push(format!(
                    "{ctx}: {what} is in {} but not in {}",
                    SIDES[has], SIDES[lacks]
                ));
                false
            }
        }
    }

    /// Absent booleans (`required`, `nullable`) mean false.
    fn flag(&mut self, ctx: &str, key: &str, a: &Value, b: &Value) {
        let [a, b] = [a, b].map(|v| Value::Bool(v[key].as_bool().unwrap_or(false)));
        self.scalar(ctx, key, &a, &b);
    }

    fn scalar(&mut self, ctx: &str, what: &str, a: &Value, b: &Value) {
        let (a, b) = (show(a), show(b));
        if a != b {
            self.out
                .push(format!("{ctx}: {what} {a} in {C}, {b} in {S}"));
        }
    }

    /// Reports both set differences on one line and returns the common items to recurse into.
    fn sets(
        &mut self,
        ctx: &str,
        item: &str,
        a: BTreeSet<String>,
        b: BTreeSet<String>,
    ) -> Vec<String> {
        let mut parts: Vec<String> = Vec::new();
        for (only, has, lacks) in [(&a - &b, 0, 1), (&b - &a, 1, 0)] {
            parts.extend(only.iter().map(|x| {
                format!(
                    "{} is in {} but not in {}",
                    item.replace("{}", x),
                    SIDES[has],
                    SIDES[lacks]
                )
            }));
        }
        if !parts.is_empty() {
            self.out.push(format!("{ctx}: {}", parts.join("; ")));
        }
        a.intersection(&b).cloned().collect()
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn elements(v: &Value, show: fn(&Value) -> String) -> BTreeSet<String> {
    v.as_array().into_iter().flatten().map(show).collect()
}

/// poem-openapi serves `application/json; charset=utf-8` where contracts say `application/json`.
fn media_type(raw: &str) -> String {
    let essence = raw.split(';').next().unwrap_or(raw);
    essence.trim().to_ascii_lowercase()
}

fn meaningful(v: &Value) -> bool {
    v.as_object()
        .is_none_or(|o| o.keys().any(|k| SCHEMA_KEYS.contains(&k.as_str())))
}

/// Display form that doubles as the comparison key: numbers go through f64 because YAML's
/// `minimum: 1` must equal poem-openapi's `"minimum": 1.0`.
fn show(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        Value::String(s) => format!("'{s}'"),
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), |f| f.to_string()),
        other => other.to_string(),
    }
}

fn show_raw(v: &Value) -> String {
    v.as_str().map_or_else(|| show(v), str::to_string)
}

// ---------------------------------------------------------------------------------------------
// The real contract against the real server.

fn contract_yaml() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

fn served_spec() -> Value {
    serde_json::from_str(&agent_sessions_server::openapi_spec_json())
        .expect("the server's spec is not valid JSON")
}

#[test]
fn served_spec_matches_openapi_yaml() {
    let diffs = diff_specs(&contract_yaml(), &served_spec());
    assert!(
        diffs.is_empty(),
        "the server's spec disagrees with openapi.yaml in {} place(s):\n{}\n\nopenapi.yaml is the \
         contract: change the server's poem-openapi types/handlers or openapi.yaml so that they \
         agree. `cargo run -p agent-sessions-server -- --print-openapi` prints the server's spec.",
        diffs.len(),
        diffs.join("\n")
    );
}

#[test]
fn mutated_contract_is_detected() {
    let mut contract = contract_yaml();
    let props = contract
        .pointer_mut("/components/schemas/Session/properties")
        .and_then(Value::as_object_mut)
        .expect("openapi.yaml has no components.schemas.Session.properties");
    let prop = props
        .remove("sessionId")
        .expect("Session has no property sessionId");
    props.insert("sessionID".into(), prop);
    let diffs = diff_specs(&contract, &served_spec());
    assert!(diffs.iter().any(|d| d.contains("sessionID")), "{diffs:#?}");
}

#[test]
fn contract_with_deleted_status_is_detected() {
    let mut contract = contract_yaml();
    contract
        .pointer_mut("/paths/~1api~1messaging~1sessions~1{sessionId}/get/responses")
        .and_then(Value::as_object_mut)
        .and_then(|r| r.remove("404"))
        .expect("openapi.yaml has no 404 for GET /api/messaging/sessions/{sessionId}");
    let diffs = diff_specs(&contract, &served_spec());
    let wanted =
        "GET /api/messaging/sessions/{sessionId} responses: status 404 is in the server's spec";
    assert!(diffs.iter().any(|d| d.contains(wanted)), "{diffs:#?}");
}

/// The WebSocket route is an operation of the server's spec like any other (its success a 101 without
/// content), so the comparison holds its upgrade status, its errors and its parameters to the contract too.
#[test]
fn websocket_route_changes_are_detected() {
    const WS: &str = "/paths/~1api~1messaging~1sessions~1{sessionId}~1ws/get";
    let mut contract = contract_yaml();
    contract
        .pointer_mut(&format!("{WS}/responses"))
        .and_then(Value::as_object_mut)
        .and_then(|r| r.remove("101"))
        .expect("openapi.yaml documents the WebSocket upgrade as a 101");
    let params = contract
        .pointer_mut(&format!("{WS}/parameters"))
        .and_then(Value::as_array_mut)
        .expect("the WebSocket route has parameters");
    let query = params
        .iter_mut()
        .find(|p| p["name"] == "lastEventId")
        .expect("a lastEventId parameter");
    query["name"] = json!("lastEventID");
    let diffs = diff_specs(&contract, &served_spec());
    let route = "GET /api/messaging/sessions/{sessionId}/ws";
    for wanted in [
        "responses: status 101 is in the server's spec",
        "parameter 'lastEventId' (query) is in the server's spec",
    ] {
        let found = diffs
            .iter()
            .any(|d| d.starts_with(route) && d.contains(wanted));
        assert!(found, "{wanted}: {diffs:#?}");
    }
}

#[test]
fn contract_with_changed_shared_response_is_detected() {
    // A shared response stands for every operation that refers to it; the differ reports a pair of schemas
    // once, under the first operation that meets it.
    let mut contract = contract_yaml();
    *contract
        .pointer_mut("/components/responses/SessionNotFound/content/application~1json/schema/$ref")
        .expect("openapi.yaml has no shared SessionNotFound response with a JSON schema") =
        json!("#/components/schemas/Session");
    let diffs = diff_specs(&contract, &served_spec());
    assert!(
        diffs.iter().any(|d| d.contains("response 404 (Session / ErrorResponse): component name \
                                          'Session' in openapi.yaml, 'ErrorResponse' in the server's spec")),
        "{diffs:#?}"
    );
}

#[test]
fn contract_with_changed_shared_parameter_is_detected() {
    let mut contract = contract_yaml();
    *contract
        .pointer_mut("/components/parameters/SessionId/name")
        .expect("openapi.yaml has no shared SessionId parameter") = json!("session_id");
    let diffs = diff_specs(&contract, &served_spec());
    let wanted =
        "GET /api/messaging/sessions/{sessionId} parameters: parameter 'session_id' (path) is \
                  in openapi.yaml but not in the server's spec";
    assert!(diffs.iter().any(|d| d.contains(wanted)), "{diffs:#?}");
}

#[test]
fn contract_with_changed_security_is_detected() {
    let mut contract = contract_yaml();
    let security = contract
        .pointer_mut("/paths/~1api~1agents/get/security")
        .expect("openapi.yaml has no security for GET /api/agents");
    *security = json!([{"apiKey": []}, {"sessionToken": []}]);
    let header = contract
        .pointer_mut("/components/securitySchemes/apiKey/name")
        .expect("openapi.yaml has no apiKey scheme");
    *header = json!("X-Api-Token");
    let diffs = diff_specs(&contract, &served_spec());
    assert!(
        diffs.iter().any(|d| d.contains("GET /api/agents security")
            && d.contains("requirement sessionToken is in openapi.yaml")),
        "{diffs:#?}"
    );
    assert!(
        diffs
            .iter()
            .any(|d| d.contains("security scheme apiKey") && d.contains("X-Api-Token")),
        "{diffs:#?}"
    );
}

/// The codes each error status may carry (the server's table, `server/src/api/error.rs`, as documented).
const CODES_BY_STATUS: [(&str, &[&str]); 15] = [
    ("400", &["VALIDATION_ERROR", "SESSION_RENEWAL_FAILED"]),
    ("401", &["UNAUTHORIZED"]),
    ("403", &["FORBIDDEN"]),
    (
        "404",
        &[
            "SESSION_NOT_FOUND",
            "AGENT_NOT_FOUND",
            "WEBHOOK_NOT_FOUND",
            "NOT_FOUND",
        ],
    ),
    ("409", &["AGENT_IN_USE", "IDEMPOTENCY_KEY_IN_USE"]),
    ("410", &["SESSION_EXPIRED"]),
    ("413", &["PAYLOAD_TOO_LARGE"]),
    ("415", &["INVALID_CONTENT_TYPE"]),
    ("422", &["IDEMPOTENCY_KEY_REUSED"]),
    ("429", &["RATE_LIMIT_EXCEEDED", "QUOTA_EXCEEDED"]),
    ("500", &["INTERNAL_SERVER_ERROR"]),
    ("502", &["AGENT_ERROR"]),
    ("503", &["SERVICE_UNAVAILABLE"]),
    ("504", &["AGENT_TIMEOUT"]),
    // No operation documents a 405 (any route answers it), but the code exists.
    ("405", &["METHOD_NOT_ALLOWED"]),
];

/// A reader of the documentation sees an example under every error response: it must be a valid error body
/// (the generated `ErrorResponse` decodes it) whose code belongs to the status.
#[test]
fn every_error_response_shows_an_example_of_its_own_status() {
    let contract = contract_yaml();
    let mut problems = Vec::new();
    for (path, item) in contract["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            for (status, response) in op["responses"].as_object().into_iter().flatten() {
                let Some((_, codes)) = CODES_BY_STATUS.iter().find(|(s, _)| s == status) else {
                    continue; // a success
                };
                let at = format!("{} {path} response {status}", method.to_uppercase());
                let response = match response["$ref"].as_str() {
                    Some(r) => r
                        .strip_prefix('#')
                        .and_then(|p| contract.pointer(p))
                        .unwrap_or_else(|| panic!("{at}: cannot resolve {r}")),
                    None => response,
                };
                let media = &response["content"]["application/json"];
                // A probe's 503 answers its own status body, not an error.
                if media["schema"]["$ref"] != "#/components/schemas/ErrorResponse" {
                    continue;
                }
                let examples: Vec<&Value> = match media["examples"].as_object() {
                    Some(named) => named.values().map(|e| &e["value"]).collect(),
                    None => vec![&media["example"]],
                };
                for example in examples {
                    let code = example["error"]["code"].as_str().unwrap_or("none");
                    if !codes.contains(&code) {
                        problems.push(format!("{at}: an example with code {code}"));
                    }
                    let decoded = serde_json::from_value::<agent_sessions::types::ErrorResponse>(
                        example.clone(),
                    );
                    if let Err(e) = decoded {
                        problems.push(format!("{at}: an example that is no ErrorResponse: {e}"));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

// ---------------------------------------------------------------------------------------------
// The differ itself, on small documents shaped like a hand-written contract and like
// poem-openapi 5.1 output.

const SESSION_PATH: &str = "/paths/~1api~1messaging~1sessions~1{sessionId}";
const CREATE_PATH: &str = "/paths/~1api~1messaging~1sessions/post";

fn contract_fixture() -> Value {
    let json_of = |name: &str| {
        let schema = json!({"$ref": format!("#/components/schemas/{name}")});
        json!({"application/json": {"schema": schema}})
    };
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Sessions", "version": "1.0.0"},
        "paths": {
            "/api/messaging/sessions": {"post": {
                "operationId": "createSession",
                "tags": ["sessions"],
                "requestBody": {"required": true, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/CreateSessionRequest"}}}},
                "responses": {
                    "201": {"description": "Created", "content": json_of("Session")},
                    "400": {"$ref": "#/components/responses/BadRequest"}
                }
            }},
            "/api/messaging/sessions/{sessionId}": {
                "parameters": [{"$ref": "#/components/parameters/SessionId"}],
                "get": {
                    "operationId": "getSession",
                    "parameters": [{"name": "limit", "in": "query", "description": "Max.",
                        "schema": {"type": "integer", "format": "int32", "minimum": 1}}],
                    "responses": {
                        "200": {"description": "OK", "content": json_of("Session")},
                        "404": {"description": "Missing", "content": json_of("Error")}
                    }
                }
            }
        },
        "components": {
            "parameters": {"SessionId": {"name": "sessionId", "in": "path", "required": true,
                "schema": {"type": "string", "format": "uuid"}}},
            "responses": {"BadRequest": {"description": "Bad", "content": json_of("Error")}},
            "schemas": {
                "Session": {"type": "object", "required": ["sessionId", "status", "createdAt"],
                    "properties": {
                    "sessionId": {"type": "string", "format": "uuid", "example": "0000"},
                    "status": {"$ref": "#/components/schemas/SessionStatus"},
                    "createdAt": {"type": "string", "format": "date-time"},
                    "metadata": {"type": "object", "additionalProperties": true},
                    "tree": {"$ref": "#/components/schemas/Node"}
                }},
                "SessionStatus": {"type": "string", "enum": ["active", "ended"]},
                "Node": {"type": "object", "properties": {
                    "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}}},
                "CreateSessionRequest": {"type": "object", "required": ["agentId"],
                    "properties": {"agentId": {"type": "string", "minLength": 1}}},
                "Error": {"type": "object", "required": ["error"],
                    "properties": {"error": {"type": "string"}}}
            }
        }
    })
}

fn served_fixture() -> Value {
    let json_of = |name: &str| {
        let schema = json!({"$ref": format!("#/components/schemas/{name}")});
        json!({"application/json; charset=utf-8": {"schema": schema}})
    };
    let param = |name: &str, place: &str, required: bool, schema: Value| {
        json!({"name": name, "schema": schema, "in": place, "required": required,
               "deprecated": false, "explode": true})
    };
    json!({
        "openapi": "3.0.0",
        "info": {"title": "server", "version": "0.1.0"},
        "tags": [],
        "paths": {
            "/api/messaging/sessions/{sessionId}": {"get": {
                "summary": "Get one.",
                "parameters": [
                    param("sessionId", "path", true, json!({"type": "string", "format": "uuid"})),
                    param("limit", "query", false,
                          json!({"type": "integer", "format": "int32", "minimum": 1.0}))
                ],
                "responses": {
                    "200": {"description": "", "content": json_of("Session")},
                    "404": {"description": "Missing", "content": json_of("Error")}
                },
                "operationId": "getSession"
            }},
            "/api/messaging/sessions": {"post": {
                "requestBody": {"content": json_of("CreateSessionRequest"), "required": true},
                "responses": {
                    "201": {"description": "", "content": json_of("Session")},
                    "400": {"description": "", "content": json_of("Error")}
                },
                "operationId": "createSession"
            }}
        },
        "components": {"schemas": {
            "Session": {"type": "object", "title": "Session", "description": "A session.",
                "required": ["sessionId", "status", "createdAt"], "properties": {
                    "sessionId": {"type": "string", "format": "uuid", "description": "Id."},
                    "status": {"description": "State.", "allOf": [
                        {"$ref": "#/components/schemas/SessionStatus"}, {"description": "State."}]},
                    "createdAt": {"type": "string", "format": "date-time"},
                    "metadata": {"type": "object", "additionalProperties": {}},
                    "tree": {"allOf": [{"$ref": "#/components/schemas/Node"}],
                        "description": "Tree."}
                }},
            "SessionStatus": {"type": "string", "description": "State.",
                "enum": ["active", "ended"]},
            "Node": {"type": "object", "title": "Node", "properties": {
                "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}}},
            "CreateSessionRequest": {"type": "object", "title": "CreateSessionRequest",
                "required": ["agentId"],
                "properties": {"agentId": {"type": "string", "minLength": 1}}},
            "Error": {"type": "object", "title": "Error", "required": ["error"],
                "properties": {"error": {"type": "string"}}}
        }}
    })
}

/// Mutates the served fixture and asserts that one reported line contains all of `wanted`.
fn assert_detects(mutate: impl FnOnce(&mut Value), wanted: &[&str]) {
    let mut served = served_fixture();
    mutate(&mut served);
    let diffs = diff_specs(&contract_fixture(), &served);
    assert!(
        diffs.iter().any(|d| wanted.iter().all(|w| d.contains(w))),
        "no line contains {wanted:?}:\n{}",
        diffs.join("\n")
    );
}

fn at<'v>(doc: &'v mut Value, pointer: &str) -> &'v mut Value {
    doc.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("fixture has no {pointer}"))
}

fn object_at<'v>(doc: &'v mut Value, pointer: &str) -> &'v mut Map<String, Value> {
    at(doc, pointer).as_object_mut().expect("not an object")
}

#[test]
fn poem_quirks_are_not_differences() {
    // allOf wrappers with descriptions, charset parameters, `{}` vs `true`, 1 vs 1.0, path-level
    // and referenced parameters/responses: all spelling, no substance.
    let diffs = diff_specs(&contract_fixture(), &served_fixture());
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[test]
fn allof_wrapper_keeps_meaningful_siblings() {
    let mut contract = contract_fixture();
    *at(
        &mut contract,
        "/components/schemas/Session/properties/status",
    ) = json!({"nullable": true, "allOf": [{"$ref": "#/components/schemas/SessionStatus"}]});
    let diffs = diff_specs(&contract, &served_fixture());
    let wanted = "(Session) property 'status' (SessionStatus): nullable true in openapi.yaml, \
                  false in the server's spec";
    assert!(diffs.len() == 1 && diffs[0].ends_with(wanted), "{diffs:#?}");
}

#[test]
fn renamed_property_is_detected() {
    assert_detects(
        |s| {
            let props = object_at(s, "/components/schemas/Session/properties");
            let prop = props.remove("sessionId").unwrap();
            props.insert("sessionID".into(), prop);
        },
        &[
            "(Session): property 'sessionId' is in openapi.yaml but not in the server's spec",
            "property 'sessionID' is in the server's spec but not in openapi.yaml",
        ],
    );
}

#[test]
fn deleted_status_is_detected() {
    assert_detects(
        |s| drop(object_at(s, &format!("{SESSION_PATH}/get/responses")).remove("404")),
        &[
            "GET /api/messaging/sessions/{sessionId} responses: ",
            "status 404 is in openapi.yaml but not in the server's spec",
        ],
    );
}

#[test]
fn changed_format_is_detected() {
    assert_detects(
        |s| {
            let created = object_at(s, "/components/schemas/Session/properties/createdAt");
            created.remove("format");
        },
        &["property 'createdAt': format 'date-time' in openapi.yaml, none in the server's spec"],
    );
}

#[test]
fn removed_required_entry_is_detected() {
    assert_detects(
        |s| *at(s, "/components/schemas/CreateSessionRequest/required") = json!([]),
        &[
            "request body (CreateSessionRequest): ",
            "required entry 'agentId' is in openapi.yaml but not in the server's spec",
        ],
    );
}

#[test]
fn changed_operation_id_is_detected() {
    assert_detects(
        |s| *at(s, &format!("{SESSION_PATH}/get/operationId")) = json!("get_session"),
        &[
            "GET /api/messaging/sessions/{sessionId}: ",
            "operationId 'getSession' in openapi.yaml, 'get_session' in the server's spec",
        ],
    );
}

#[test]
fn removed_parameter_is_detected() {
    assert_detects(
        |s| {
            let params = at(s, &format!("{SESSION_PATH}/get/parameters"));
            params
                .as_array_mut()
                .unwrap()
                .retain(|p| p["name"] != "limit");
        },
        &["parameters: parameter 'limit' (query) is in openapi.yaml but not in the server's spec"],
    );
}

#[test]
fn changed_enum_value_is_detected() {
    assert_detects(
        |s| *at(s, "/components/schemas/SessionStatus/enum") = json!(["active", "closed"]),
        &[
            "(SessionStatus): enum value 'ended' is in openapi.yaml but not in the server's spec",
            "enum value 'closed' is in the server's spec but not in openapi.yaml",
        ],
    );
}

#[test]
fn different_request_body_schema_is_detected() {
    assert_detects(
        |s| {
            *at(s, &format!("{CREATE_PATH}/requestBody/content")) = json!({
                "application/json; charset=utf-8": {"schema": {"type": "object",
                    "required": ["agentId"], "properties": {"agentId": {"type": "integer"}}}}});
        },
        &[
            "schema of POST /api/messaging/sessions request body (CreateSessionRequest) ",
            "property 'agentId': type 'string' in openapi.yaml, 'integer' in the server's spec",
        ],
    );
}

#[test]
fn different_component_name_is_detected() {
    assert_detects(
        |s| {
            let schemas = object_at(s, "/components/schemas");
            let error = schemas.remove("Error").unwrap();
            schemas.insert("ErrorBody".into(), error);
            let text = s
                .to_string()
                .replace("schemas/Error\"", "schemas/ErrorBody\"");
            *s = serde_json::from_str(&text).unwrap();
        },
        &[
            "(Error / ErrorBody): ",
            "component name 'Error' in openapi.yaml, 'ErrorBody' in the server's spec",
        ],
    );
}

#[test]
fn dangling_response_ref_is_detected() {
    let mut contract = contract_fixture();
    *at(&mut contract, &format!("{CREATE_PATH}/responses/400/$ref")) =
        json!("#/components/responses/BadReqest");
    let diffs = diff_specs(&contract, &served_fixture());
    let wanted = "POST /api/messaging/sessions response 400: cannot resolve $ref \
                  '#/components/responses/BadReqest' in openapi.yaml";
    assert!(diffs.iter().any(|d| d == wanted), "{diffs:#?}");
}

#[test]
fn self_referencing_schema_terminates() {
    let mut served = served_fixture();
    object_at(&mut served, "/components/schemas/Node/properties")
        .insert("label".into(), json!({"type": "string"}));
    let diffs = diff_specs(&contract_fixture(), &served);
    // Once per component pair, however many operations and recursion levels reach it.
    assert_eq!(diffs.len(), 1, "{}", diffs.join("\n"));
    assert!(
        diffs[0].contains("(Node): property 'label' is in the server's spec"),
        "{diffs:?}"
    );
}
