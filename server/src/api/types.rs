//! Wire scalars poem-openapi has no exact type for: ISO timestamps with milliseconds and a `Z`, minute counts
//! that print as `30` rather than `30.0`, and free-form JSON objects (`metadata`).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::{Map, Value};

/// Implements the poem-openapi traits for a newtype from its schema and two conversions.
macro_rules! wire_scalar {
    ($ty:ident, $name:literal, $schema:expr, to: $to:expr, from: $from:expr) => {
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
    .serialize_str(&crate::domain::iso(t.0)));

/// A duration in minutes; fractions are allowed (7.5), whole numbers print without a decimal point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Minutes(pub f64);

wire_scalar!(
    Minutes,
    "number_double",
    MetaSchema::new_with_format("number", "double"),
    to: |m: &Minutes| crate::domain::event::minutes(m.0),
    from: |v: Value| v
        .as_f64()
        .map(Minutes)
        .ok_or_else(|| ParseError::expected_type(v))
);

serialize_as!(Minutes, |m: &Minutes, s: S| {
    serde::Serialize::serialize(&crate::domain::event::minutes(m.0), s)
});

/// A free-form JSON object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsonObject(pub Map<String, Value>);

wire_scalar!(
    JsonObject,
    "object",
    MetaSchema {
        additional_properties: Some(Box::new(MetaSchemaRef::Inline(Box::new(MetaSchema::ANY)))),
        ..MetaSchema::new("object")
    },
    to: |o: &JsonObject| Value::Object(o.0.clone()),
    from: |v: Value| match v {
        Value::Object(map) => Ok(JsonObject(map)),
        other => Err(ParseError::expected_type(other)),
    }
);

serialize_as!(JsonObject, |o: &JsonObject, s: S| {
    serde::Serialize::serialize(&o.0, s)
});

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
}
