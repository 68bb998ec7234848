//! The `Allow` header of a 405 (RFC 9110 §15.5.6): the methods the contract documents for the path the request
//! named, read once from `openapi.yaml`'s paths so that it cannot fall out of step with the routes.

use std::sync::OnceLock;

use poem::http::Method;

/// One path of the contract: its segments (`None` for a `{parameter}`) and its methods.
struct PathMethods {
    segments: Vec<Option<String>>,
    methods: Vec<Method>,
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
            })
            .collect()
    })
}

/// The methods documented for `path` (every contract path it matches), in a fixed order, as the `Allow` value;
/// None when the contract has no such path.
pub fn allowed(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split('/').collect();
    let mut methods: Vec<Method> = Vec::new();
    for entry in table() {
        let matches = entry.segments.len() == parts.len()
            && entry
                .segments
                .iter()
                .zip(&parts)
                .all(|(seg, part)| match seg {
                    Some(literal) => literal == part,
                    None => !part.is_empty(),
                });
        if matches {
            for m in &entry.methods {
                if !methods.contains(m) {
                    methods.push(m.clone());
                }
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

#[cfg(test)]
mod tests {
    use super::allowed;

    #[test]
    fn allow_lists_the_contracts_methods_for_the_path() {
        assert_eq!(allowed("/api/agents").as_deref(), Some("GET, POST"));
        assert_eq!(allowed("/api/agents/x").as_deref(), Some("GET, DELETE"));
        assert_eq!(
            allowed("/api/messaging/sessions/abc/timeout").as_deref(),
            Some("PATCH")
        );
        // `health` is also a session id for the contract's templated path.
        assert_eq!(
            allowed("/api/messaging/sessions/health").as_deref(),
            Some("GET, DELETE")
        );
        assert_eq!(allowed("/api/nothing"), None);
    }
}
