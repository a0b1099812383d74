//! JSON ⇄ [`Value`] through serde, without an intermediate `serde_json::Value`.
//!
//! Decoding goes straight from the input to [`Value`], so every string is copied once at
//! most, and the depth check runs as soon as an array or object opens: a hostile document
//! fails at [`MAX_NESTING_DEPTH`] instead of at `serde_json`'s own limit of 128.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Serialize, Serializer};

use crate::xapi::rpc::MAX_NESTING_DEPTH;
use crate::xapi::rpc::error::RpcCodecError;
use crate::xapi::rpc::value::Value;

/// JSON's view of a [`Value`]: datetimes are strings, `Nil` is `null`, and non-finite
/// doubles, which JSON cannot express, are `null` as in JavaScript's `JSON.stringify`.
impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::String(text) | Value::DateTime(text) => serializer.serialize_str(text),
            Value::Int(n) => serializer.serialize_i64(*n),
            Value::Double(x) => serializer.serialize_f64(*x),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Array(items) => serializer.collect_seq(items),
            Value::Struct(members) => serializer.collect_map(members),
            Value::Nil => serializer.serialize_unit(),
        }
    }
}

/// Parses one whole JSON document (nothing but whitespace may follow) into a [`Value`].
pub(super) fn decode_document(document: &[u8]) -> Result<Value, RpcCodecError> {
    let mut deserializer = serde_json::Deserializer::from_slice(document);
    let value = ValueSeed { depth: 0 }
        .deserialize(&mut deserializer)
        .map_err(RpcCodecError::JsonSyntax)?;
    deserializer.end().map_err(RpcCodecError::JsonSyntax)?;
    Ok(value)
}

/// Deserialises a value with `depth` arrays and objects around it.
#[derive(Clone, Copy)]
struct ValueSeed {
    depth: usize,
}

impl ValueSeed {
    fn enter<E: de::Error>(self) -> Result<ValueSeed, E> {
        if self.depth >= MAX_NESTING_DEPTH {
            return Err(E::custom(format!(
                "values nested deeper than {MAX_NESTING_DEPTH} arrays and objects"
            )));
        }
        Ok(ValueSeed {
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Int(n))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        i64::try_from(n)
            .map(Value::Int)
            .map_err(|_| E::custom(format!("integer {n} does not fit XAPI's signed 64-bit int")))
    }

    fn visit_f64<E: de::Error>(self, x: f64) -> Result<Value, E> {
        Ok(Value::Double(x))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Value, E> {
        Ok(Value::String(text.to_owned()))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Value, E> {
        Ok(Value::String(text))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }

    /// Grows only as elements arrive: a size hint from the input never sizes an allocation.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.enter()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    /// A repeated key keeps the last value, as JavaScript's `JSON.parse` does.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.enter()?;
        let mut members = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(inner)?;
            members.insert(key, value);
        }
        Ok(Value::Struct(members))
    }
}
