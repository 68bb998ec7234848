//! Wire scalars poem-openapi has no exact type for: ISO timestamps with milliseconds and a `Z`, minute counts
//! that print as `30` rather than `30.0`, free-form JSON objects (`metadata`), and text parameters documented
//! with bounds the handlers check themselves (cursors, event ids, idempotency keys).

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::{Map, Value};

/// Implements poem-openapi's `Type` for a newtype that stands for itself on the wire, with its schema.
macro_rules! scalar_type {
    ($ty:ident, $name:literal, $schema:expr) => {
        impl Type for $ty {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> Cow<'static, str> {
                $name.into()
            }

            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new($schema))
            }

            fn as_raw_value(&self) -> Option<&Self> {
                Some(self)
            }

            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
                Box::new(std::iter::once(self))
            }
        }
    };
}

/// Implements the poem-openapi traits for a newtype from its schema and two conversions.
macro_rules! wire_scalar {
    ($ty:ident, $name:literal, $schema:expr, to: $to:expr, from: $from:expr) => {
        scalar_type!($ty, $name, $schema);

        impl ToJSON for $ty {
            fn to_json(&self) -> Option<Value> {
                #[allow(clippy::redundant_closure_call)]
                Some(($to)(self))
            }
        }

        impl ParseFromJSON for $ty {
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                #[allow(clippy::redundant_closure_call)]
                ($from)(value.unwrap_or_default())
            }
        }
    };
}

/// Serializes a wire scalar with serde exactly as its `ToJSON` does (for `JsonOut`, the direct serializer).
macro_rules! serialize_as {
    ($ty:ident, $to:expr) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                #[allow(clippy::redundant_closure_call)]
                ($to)(self, serializer)
            }
        }
    };
}

/// An instant on the wire: `2025-01-01T00:00:00.000Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub DateTime<Utc>);

wire_scalar!(
    Timestamp,
    "string_date-time",
    MetaSchema::new_with_format("string", "date-time"),
    to: |t: &Timestamp| Value::String(crate::domain::iso(t.0)),
    from: |v: Value| match v {
        Value::String(s) => DateTime::parse_from_rfc3339(&s)
            .map(|t| Timestamp(t.with_timezone(&Utc)))
            .map_err(|e| ParseError::custom(e.to_string())),
        other => Err(ParseError::expected_type(other)),
    }
);

serialize_as!(Timestamp, |t: &Timestamp, s: S| s
    .serialize_str(crate::domain::IsoStamp::of(t.0).as_str()));

/// A duration in minutes; fractions are allowed (7.5), whole numbers print without a decimal point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Minutes(pub f64);

wire_scalar!(
    Minutes,
    "number_double",
    MetaSchema::new_with_format("number", "double"),
    to: |m: &Minutes| crate::domain::timeout::minutes_json(m.0),
    from: |v: Value| v
        .as_f64()
        .map(Minutes)
        .ok_or_else(|| ParseError::expected_type(v))
);

serialize_as!(Minutes, |m: &Minutes, s: S| {
    serde::Serialize::serialize(&crate::domain::timeout::minutes_json(m.0), s)
});

/// A free-form JSON object, shared with the session or message it belongs to rather than copied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsonObject(pub Arc<Map<String, Value>>);

impl From<Map<String, Value>> for JsonObject {
    fn from(map: Map<String, Value>) -> Self {
        Self(Arc::new(map))
    }
}

wire_scalar!(
    JsonObject,
    "object",
    MetaSchema {
        additional_properties: Some(Box::new(MetaSchemaRef::Inline(Box::new(MetaSchema::ANY)))),
        ..MetaSchema::new("object")
    },
    to: |o: &JsonObject| Value::Object(Map::clone(&o.0)),
    from: |v: Value| match v {
        Value::Object(map) => Ok(JsonObject::from(map)),
        other => Err(ParseError::expected_type(other)),
    }
);

serialize_as!(JsonObject, |o: &JsonObject, s: S| {
    serde::Serialize::serialize(&o.0, s)
});

/// The `data` of an event-stream frame: a payload's JSON text (as a client's SSE parser sees it).
#[derive(Debug, Clone, PartialEq)]
pub struct EventData(pub String);

wire_scalar!(
    EventData,
    "string_event_data",
    MetaSchema {
        description: Some("The event's payload, as JSON text"),
        ..MetaSchema::new("string")
    },
    to: |d: &EventData| Value::String(d.0.clone()),
    from: |v: Value| match v {
        Value::String(s) => serde_json::from_str::<serde::de::IgnoredAny>(&s)
            .map(|_| EventData(s))
            .map_err(|e| ParseError::custom(e.to_string())),
        other => Err(ParseError::expected_type(other)),
    }
);

impl EventData {
    /// The JSON text of a wire shape.
    pub fn of<T: serde::Serialize>(payload: &T) -> Self {
        // The wire shapes have string keys only, so serializing them does not fail.
        Self(serde_json::to_string(payload).unwrap_or_else(|_| "null".to_string()))
    }
}

/// The `id` of an event-stream frame: a decimal event id, which `Last-Event-ID` sends back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventId(pub i64);

wire_scalar!(
    EventId,
    "string_event_id",
    MetaSchema {
        pattern: Some("^[0-9]+$".to_string()),
        ..MetaSchema::new("string")
    },
    to: |id: &EventId| Value::String(id.0.to_string()),
    from: |v: Value| match v {
        Value::String(s) => s
            .parse::<i64>()
            .map(EventId)
            .map_err(|e| ParseError::custom(e.to_string())),
        other => Err(ParseError::expected_type(other)),
    }
);

/// A text parameter whose schema states a pattern for documentation and generated clients, while the handler
/// reads any text and answers a value outside it with its own, clearer error (or, for cursors, also accepts
/// forms the pattern leaves out, such as the 29th to 31st of a month, which a pattern cannot tell from the 30th
/// of February).
macro_rules! documented_text {
    ($ty:ident, $name:literal, $pattern:expr) => {
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $ty(pub String);

        scalar_type!(
            $ty,
            $name,
            MetaSchema {
                pattern: Some($pattern.to_string()),
                ..MetaSchema::new("string")
            }
        );

        impl poem_openapi::types::ParseFromParameter for $ty {
            fn parse_from_parameter(value: &str) -> ParseResult<Self> {
                Ok($ty(value.to_string()))
            }
        }
    };
}

/// An integer query parameter read whole, however large: values beyond 64 bits saturate (a page size or an
/// offset that large means "all", and the contract calls every integer valid). `NONNEGATIVE` refuses a sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WideInt<const NONNEGATIVE: bool>(pub i64);

impl<const NONNEGATIVE: bool> Type for WideInt<NONNEGATIVE> {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "integer_wide".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            minimum: NONNEGATIVE.then_some(0.0),
            ..MetaSchema::new("integer")
        }))
    }

    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(std::iter::once(self))
    }
}

impl<const NONNEGATIVE: bool> poem_openapi::types::ParseFromParameter for WideInt<NONNEGATIVE> {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        let (negative, digits) = match value.strip_prefix('-') {
            Some(rest) if !NONNEGATIVE => (true, rest),
            _ => (false, value),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            let expected = if NONNEGATIVE {
                "a non-negative integer"
            } else {
                "an integer"
            };
            return Err(ParseError::custom(format!(
                "expected {expected}, got '{value}'"
            )));
        }
        // Parsed with its sign, so that i64::MIN itself reads exactly; beyond 64 bits it saturates.
        let signed = if negative {
            format!("-{digits}")
        } else {
            digits.to_string()
        };
        Ok(WideInt(signed.parse::<i64>().unwrap_or(if negative {
            i64::MIN
        } else {
            i64::MAX
        })))
    }
}

/// Epoch milliseconds, or an ISO-8601 date-time; empty: no bound. The pattern keeps to days 01 to 28 so that
/// every value it describes is a real date; the server reads any valid date (and dates without a zone as UTC).
pub const CURSOR_PATTERN: &str = r"^(|-?[0-9]{1,15}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$";

documented_text!(Cursor, "string_cursor", CURSOR_PATTERN);

// An event id as `Last-Event-ID` sends it back; empty: none.
documented_text!(LastEventId, "string_last_event_id", r"^[0-9]{0,18}$");

/// An idempotency key: printable ASCII, no space first or last (`domain::validate::idempotency_key`).
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]([ -~]*[!-~])?$";

/// The schema of an `Idempotency-Key` header, with its bounds (`api::idempotency::KeyHeader` reads the header
/// itself, and `domain::validate::idempotency_key` checks it with a message of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKeyText(pub String);

scalar_type!(
    IdempotencyKeyText,
    "string_idempotency_key",
    MetaSchema {
        min_length: Some(1),
        max_length: Some(crate::domain::idempotency::MAX_KEY_CHARS),
        pattern: Some(IDEMPOTENCY_KEY_PATTERN.to_string()),
        ..MetaSchema::new("string")
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_print_like_the_reference() {
        assert_eq!(Minutes(30.0).to_json(), Some(serde_json::json!(30)));
        assert_eq!(Minutes(7.5).to_json(), Some(serde_json::json!(7.5)));
    }

    #[test]
    fn timestamps_have_milliseconds_and_z() {
        let t = DateTime::from_timestamp_millis(1_735_689_600_007).unwrap();
        assert_eq!(
            Timestamp(t).to_json(),
            Some(Value::String("2025-01-01T00:00:00.007Z".into()))
        );
    }

    #[test]
    fn wide_integers_saturate_and_refuse_what_is_not_an_integer() {
        use poem_openapi::types::ParseFromParameter;
        let signed = |v: &str| WideInt::<false>::parse_from_parameter(v).map(|w| w.0).ok();
        let unsigned = |v: &str| WideInt::<true>::parse_from_parameter(v).map(|w| w.0).ok();
        assert_eq!(signed("42"), Some(42));
        assert_eq!(signed("-7"), Some(-7));
        assert_eq!(signed("129897819649475317860401152"), Some(i64::MAX));
        assert_eq!(signed("-129897819649475317860401152"), Some(i64::MIN));
        for bad in ["", "-", "1.5", "1e3", "+5", " 5", "abc"] {
            assert_eq!(signed(bad), None, "{bad:?}");
        }
        assert_eq!(unsigned("-1"), None);
        assert_eq!(unsigned("99999999999999999999"), Some(i64::MAX));
    }
}
