//! The `DateTime` scalar as clients see it.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use chrono::{DateTime, Utc};

/// A `chrono` UTC time as the `DateTime` scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub DateTime<Utc>);

/// An instant in time: an RFC 3339 timestamp in UTC, for example
/// `2026-11-26T06:14:46.123456+00:00`. JavaScript's `new Date(value)` reads it as is; in
/// graphql-codegen, map it with `scalars: { DateTime: 'string' }`.
#[Scalar(name = "DateTime", specified_by_url = "https://datatracker.ietf.org/doc/html/rfc3339")]
impl ScalarType for Timestamp {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(text) => Ok(Timestamp(
                DateTime::parse_from_rfc3339(text)
                    .map_err(|_| InputValueError::custom("expected an RFC 3339 timestamp"))?
                    .with_timezone(&Utc),
            )),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_rfc3339())
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(time: DateTime<Utc>) -> Self {
        Timestamp(time)
    }
}
