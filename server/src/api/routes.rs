//! What the contract says of a request's path, read once from `openapi.yaml`'s paths so that it cannot fall out
//! of step with the routes: the methods it documents there (the `Allow` header of a 405, RFC 9110 §15.5.6),
//! whether an operation is public (it lists no security requirement), and each operation's path template (for
//! logs).

use std::sync::OnceLock;

use poem::http::Method;

/// One path of the contract: its segments (`None` for a `{parameter}`), its methods, and which of them are public.
struct PathMethods {
    segments: Vec<Option<String>>,
    methods: Vec<Method>,
    public: Vec<Method>,
}

fn table() -> &'static [PathMethods] {
    static TABLE: OnceLock<Vec<PathMethods>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let contract: serde_json::Value =
            serde_json::from_str(super::contract_json()).unwrap_or_default();
        let Some(paths) = contract["paths"].as_object() else {
            return Vec::new();
        };
        paths
            .iter()
            .map(|(path, item)| PathMethods {
                segments: path
                    .split('/')
                    .map(|s| (!(s.starts_with('{') && s.ends_with('}'))).then(|| s.to_string()))
                    .collect(),
                methods: item
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(m, _)| m.to_uppercase().parse::<Method>().ok())
                    .collect(),
                public: item
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, op)| op["security"].as_array().is_none_or(Vec::is_empty))
                    .filter_map(|(m, _)| m.to_uppercase().parse::<Method>().ok())
                    .collect(),
            })
            .collect()
    })
}

/// The contract's paths that `path` matches, only the most specific: as in the router, a path with more
/// literal segments wins (`/sessions/health` is the health check, not a session).
fn matching(path: &str) -> Vec<&'static PathMethods> {
    let parts: Vec<&str> = path.split('/').collect();
    let matching: Vec<&PathMethods> = table()
        .iter()
        .filter(|entry| {
            entry.segments.len() == parts.len()
                && entry
                    .segments
                    .iter()
                    .zip(&parts)
                    .all(|(seg, part)| match seg {
                        Some(literal) => literal == part,
                        None => !part.is_empty(),
                    })
        })
        .collect();
    let literals = |e: &PathMethods| e.segments.iter().filter(|s| s.is_some()).count();
    let most = matching.iter().map(|e| literals(e)).max().unwrap_or(0);
    matching
        .into_iter()
        .filter(|e| literals(e) == most)
        .collect()
}

/// The methods documented for `path`, in a fixed order, as the `Allow` value; None when the contract has no
/// such path.
pub fn allowed(path: &str) -> Option<String> {
    let mut methods: Vec<Method> = Vec::new();
    for entry in matching(path) {
        for m in &entry.methods {
            if !methods.contains(m) {
                methods.push(m.clone());
            }
        }
    }
    if methods.is_empty() {
        return None;
    }
    const ORDER: [Method; 5] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ];
    methods.sort_by_key(|m| ORDER.iter().position(|o| o == m).unwrap_or(ORDER.len()));
    Some(
        methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// The path template of the operation `operation_id` (`/api/messaging/sessions/{sessionId}`), if the contract
/// has it.
pub fn template(operation_id: &str) -> Option<&'static str> {
    static TEMPLATES: OnceLock<std::collections::HashMap<String, String>> = OnceLock::new();
    TEMPLATES
        .get_or_init(|| {
            let contract: serde_json::Value =
                serde_json::from_str(super::contract_json()).unwrap_or_default();
            let mut templates = std::collections::HashMap::new();
            for (path, item) in contract["paths"].as_object().into_iter().flatten() {
                for op in item.as_object().into_iter().flatten().map(|(_, op)| op) {
                    if let Some(id) = op["operationId"].as_str() {
                        templates.insert(id.to_string(), path.clone());
                    }
                }
            }
            templates
        })
        .get(operation_id)
        .map(String::as_str)
}

/// Whether `method` on `path` is an operation that needs no credentials (the health check, the probes).
pub fn is_public(method: &Method, path: &str) -> bool {
    matching(path).iter().any(|e| e.public.contains(method))
}

#[cfg(test)]
mod tests {
    use poem::http::Method;

    use super::{allowed, is_public};

    #[test]
    fn allow_lists_the_contracts_methods_for_the_path() {
        assert_eq!(allowed("/api/agents").as_deref(), Some("GET, POST"));
        assert_eq!(allowed("/api/agents/x").as_deref(), Some("GET, DELETE"));
        assert_eq!(
            allowed("/api/messaging/sessions/abc/timeout").as_deref(),
            Some("PATCH")
        );
        // The literal path wins over the templated one, as in the router.
        assert_eq!(
            allowed("/api/messaging/sessions/health").as_deref(),
            Some("GET")
        );
        assert_eq!(allowed("/api/nothing"), None);
    }

    #[test]
    fn operations_have_their_path_templates() {
        assert_eq!(
            super::template("getSession"),
            Some("/api/messaging/sessions/{sessionId}")
        );
        assert_eq!(super::template("docs"), None);
    }

    #[test]
    fn only_the_health_check_and_the_probes_are_public() {
        assert!(is_public(&Method::GET, "/api/messaging/sessions/health"));
        assert!(is_public(&Method::GET, "/livez"));
        assert!(is_public(&Method::GET, "/readyz"));
        assert!(!is_public(&Method::GET, "/metrics"));
        assert!(!is_public(&Method::GET, "/api/messaging/sessions/abc"));
        assert!(!is_public(&Method::GET, "/api/agents"));
        assert!(!is_public(&Method::POST, "/api/messaging/sessions/health"));
    }
}
