//! The rules for single request values (metadata, timeout configurations, message content, attachments,
//! cursors), with the reference's error messages. `api/decode.rs` applies them to whole bodies.

use serde_json::{Map, Value};
use uuid::Uuid;

use super::{SessionError, TimeoutConfigPatch};

/// Largest accepted `metadata`, in bytes of serialized JSON.
pub const MAX_METADATA_BYTES: usize = 10_240;
/// Longest accepted agent name, in characters.
pub const MAX_AGENT_NAME_CHARS: usize = 100;

/// Whitespace as any of the usual definitions counts it (Unicode White_Space, ECMAScript's `\s` with U+FEFF,
/// Python's `isspace` with U+001C to U+001F). A text needs one character outside this set to be non-blank,
/// which is exactly what the contract's `pattern` for names and message content says, whatever regex engine a
/// client validates it with.
pub fn is_blank_char(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{FEFF}' | '\u{1C}'..='\u{1F}')
}

/// Not empty, and not only blank characters.
pub fn has_visible_char(text: &str) -> bool {
    text.chars().any(|c| !is_blank_char(c) && c != '\0')
}

/// Accepts only the canonical hyphenated form (8-4-4-4-12 hex), like the reference's validator.
pub fn parse_uuid(s: &str) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    Uuid::try_parse(s).ok()
}

/// `metadata`: absent means `{}`; otherwise an object of at most [`MAX_METADATA_BYTES`].
pub fn metadata(value: Option<Value>) -> Result<Map<String, Value>, SessionError> {
    match value {
        None => Ok(Map::new()),
        Some(Value::Object(map)) => {
            let size = serde_json::to_vec(&map)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if size > MAX_METADATA_BYTES {
                return Err(SessionError::invalid_field(
                    format!(
                        "Metadata exceeds maximum size of {MAX_METADATA_BYTES} bytes (got {size})"
                    ),
                    "metadata",
                ));
            }
            Ok(map)
        }
        Some(_) => Err(SessionError::invalid_field(
            "metadata must be an object",
            "metadata",
        )),
    }
}

/// A partial timeout config (create's `timeoutConfig`, the PATCH body, an agent's `sessionDefaults`).
/// A field of the wrong JSON type is an error: the reference silently ignores it, which hides client bugs.
pub fn timeout_patch(
    value: Option<Value>,
    field: &str,
) -> Result<TimeoutConfigPatch, SessionError> {
    let map = match value {
        None => return Ok(TimeoutConfigPatch::default()),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(SessionError::invalid_field(
                format!("{field} must be an object"),
                field,
            ))
        }
    };
    let number = |name: &str| -> Result<Option<f64>, SessionError> {
        match map.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|n| n.is_finite())
                .map(Some)
                .ok_or_else(|| {
                    SessionError::invalid_field(
                        format!("{field}.{name} must be a number"),
                        &format!("{field}.{name}"),
                    )
                }),
        }
    };
    let auto_renew = match map.get("autoRenew") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(SessionError::invalid_field(
                format!("{field}.autoRenew must be a boolean"),
                &format!("{field}.autoRenew"),
            ))
        }
    };
    Ok(TimeoutConfigPatch {
        timeout_minutes: number("timeoutMinutes")?,
        auto_renew,
        max_duration_minutes: number("maxDurationMinutes")?,
        warning_threshold_minutes: number("warningThresholdMinutes")?,
    })
}

/// Longest accepted message, in characters.
pub const MAX_CONTENT_CHARS: usize = 4000;
/// Most attachments on one message.
pub const MAX_ATTACHMENTS: usize = 20;

/// 1 to [`MAX_CONTENT_CHARS`] characters, not only whitespace, and no NUL (which no text column of
/// PostgreSQL can hold).
pub fn content(content: &str) -> Result<(), SessionError> {
    if content.contains('\0') {
        return Err(SessionError::invalid_field(
            "Content must not contain NUL characters",
            "content",
        ));
    }
    let n = content.chars().count();
    if !has_visible_char(content) || n > MAX_CONTENT_CHARS {
        return Err(SessionError::invalid_field(
            format!("Content must be between 1 and {MAX_CONTENT_CHARS} characters (got {n})"),
            "content",
        ));
    }
    Ok(())
}

/// An idempotency key (the `Idempotency-Key` header, or `clientMessageId`, named by `field`): 1 to
/// [`super::idempotency::MAX_KEY_CHARS`] printable ASCII characters (space to `~`), not starting or ending
/// with a space, so that keys compare and store the same everywhere and a header can carry any of them (HTTP
/// drops spaces around a header's value).
pub fn idempotency_key(key: &str, field: &str) -> Result<(), SessionError> {
    let max = super::idempotency::MAX_KEY_CHARS;
    let printable = key.bytes().all(|b| (b' '..=b'~').contains(&b));
    if key.is_empty() || key.len() > max || !printable || key.starts_with(' ') || key.ends_with(' ')
    {
        return Err(SessionError::invalid_field(
            format!(
                "{field} must be 1 to {max} printable ASCII characters, not starting or ending with a space"
            ),
            field,
        ));
    }
    Ok(())
}

/// `attachments`: absent, or an array of `{type, url, name?, size?, mimeType?}`.
pub fn attachments(value: Option<Value>) -> Result<Option<Vec<super::Attachment>>, SessionError> {
    let items = match value {
        None => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(SessionError::invalid_field(
                "attachments must be an array",
                "attachments",
            ))
        }
    };
    if items.len() > MAX_ATTACHMENTS {
        return Err(SessionError::invalid_field(
            format!("At most {MAX_ATTACHMENTS} attachments are allowed"),
            "attachments",
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let field = format!("attachments[{i}]");
            let map = match &item {
                Value::Object(m) => m,
                _ => {
                    return Err(SessionError::invalid_field(
                        format!("{field} must be an object"),
                        &field,
                    ))
                }
            };
            if !matches!(
                map.get("type").and_then(Value::as_str),
                Some("image" | "file" | "audio" | "video" | "document")
            ) {
                return Err(SessionError::invalid_field(
                    format!("{field}.type must be one of image, file, audio, video, document"),
                    &format!("{field}.type"),
                ));
            }
            if map
                .get("url")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(SessionError::invalid_field(
                    format!("{field}.url must be a non-empty string"),
                    &format!("{field}.url"),
                ));
            }
            // Optional fields, when present, have their declared type (null is not one of them).
            for (key, is_type) in [
                ("name", Value::is_string as fn(&Value) -> bool),
                ("mimeType", Value::is_string),
                ("size", Value::is_number),
            ] {
                if map.get(key).is_some_and(|v| !is_type(v)) {
                    let what = if key == "size" {
                        "a number"
                    } else {
                        "a string"
                    };
                    return Err(SessionError::invalid_field(
                        format!("{field}.{key} must be {what}"),
                        &format!("{field}.{key}"),
                    ));
                }
            }
            serde_json::from_value(item.clone()).map_err(|e| {
                SessionError::invalid_field(format!("{field} is invalid: {e}"), &field)
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A message cursor: epoch milliseconds (as the reference) or an ISO-8601 date-time.
pub fn cursor(value: &str, name: &str) -> Result<i64, SessionError> {
    let v = value.trim();
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_millis())
        .or_else(|_| {
            // Dates without a zone are read as UTC, dates without a time as midnight.
            chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f")
                .or_else(|_| {
                    chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
                        .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default())
                })
                .map(|t| t.and_utc().timestamp_millis())
        })
        .map_err(|_| {
            SessionError::invalid_field(
                format!(
                    "Invalid '{name}' cursor: expected epoch milliseconds or an ISO-8601 date-time"
                ),
                name,
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(r: Result<impl std::fmt::Debug, SessionError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn metadata_must_be_a_small_object() {
        assert!(metadata(None).unwrap().is_empty());
        assert!(metadata(Some(json!([1]))).is_err());
        assert!(metadata(Some(json!(null))).is_err());
        let big = "x".repeat(MAX_METADATA_BYTES);
        assert!(message(metadata(Some(json!({ "a": big })))).contains("10240"));
    }

    #[test]
    fn timeout_fields_must_have_their_type() {
        assert_eq!(
            message(timeout_patch(
                Some(json!({"timeoutMinutes": "30"})),
                "timeoutConfig"
            )),
            "timeoutConfig.timeoutMinutes must be a number"
        );
        assert!(timeout_patch(Some(json!({"autoRenew": null})), "timeoutConfig").is_err());
        let p = timeout_patch(
            Some(json!({"timeoutMinutes": 7.5, "autoRenew": false})),
            "t",
        )
        .unwrap();
        assert_eq!(p.timeout_minutes, Some(7.5));
        assert_eq!(p.auto_renew, Some(false));
    }

    #[test]
    fn nul_characters_are_refused() {
        assert!(content("a\0b").is_err());
    }

    #[test]
    fn idempotency_keys_are_short_printable_ascii() {
        assert!(idempotency_key("3c90c3cc-0d44-4b50-8888-8dd25736052a", "Idempotency-Key").is_ok());
        assert!(idempotency_key("a key ~", "clientMessageId").is_ok());
        assert!(idempotency_key(&"k".repeat(255), "Idempotency-Key").is_ok());
        for bad in ["", " ", " lead", "trail ", "tab\there", "é", "\u{7f}"] {
            assert!(idempotency_key(bad, "Idempotency-Key").is_err(), "{bad:?}");
        }
        assert_eq!(
            message(idempotency_key(&"k".repeat(256), "clientMessageId")),
            "clientMessageId must be 1 to 255 printable ASCII characters, not starting or ending with a space"
        );
    }
    #[test]
    fn cursors_accept_ms_and_iso() {
        assert_eq!(
            cursor("1735689600000", "before").unwrap(),
            1_735_689_600_000
        );
        assert_eq!(
            cursor("2025-01-01T00:00:00.000Z", "before").unwrap(),
            1_735_689_600_000
        );
        assert_eq!(
            cursor("2025-01-01T01:00:00+01:00", "before").unwrap(),
            1_735_689_600_000
        );
        assert_eq!(cursor("2025-01-01", "before").unwrap(), 1_735_689_600_000);
        assert!(cursor("yesterday", "before").is_err());
    }

    #[test]
    fn attachments_are_checked() {
        assert!(
            attachments(Some(json!([{"type": "image", "url": "http://x/a.png"}])))
                .unwrap()
                .is_some()
        );
        assert!(attachments(Some(json!([{"type": "sticker", "url": "x"}]))).is_err());
        assert!(attachments(Some(json!([{"type": "file"}]))).is_err());
        assert!(attachments(Some(json!({}))).is_err());
    }
}
