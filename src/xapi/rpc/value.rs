//! XAPI values, the common currency of both wire formats.

use std::collections::BTreeMap;

/// A value as XAPI puts it on the wire.
///
/// The mapping from API types (see the protocol reference, §2.2):
/// * `int` is [`Value::Int`] when the sender typed it, but xapi itself writes 64-bit ints
///   over XML-RPC as untyped text, which decodes as [`Value::String`]; [`Value::as_i64`]
///   accepts both.
/// * `void` is the empty string, [`Value::void`].
/// * refs, enums and map keys are strings; maps are [`Value::Struct`].
/// * [`Value::DateTime`] holds the text as sent, normally `YYYYMMDDTHH:MM:SSZ`. JSON has no
///   datetime type, so over JSON-RPC datetimes arrive as [`Value::String`];
///   [`Value::as_datetime`] accepts both.
/// * [`Value::Nil`] is XML-RPC `<nil/>` and JSON `null`. XAPI itself never sends it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    DateTime(String),
    Array(Vec<Value>),
    /// Members in key order, so encodings are deterministic.
    Struct(BTreeMap<String, Value>),
    Nil,
}

impl Value {
    /// XAPI's `void` result: the empty string.
    pub fn void() -> Self {
        Value::String(String::new())
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(text) => Some(text),
            _ => None,
        }
    }

    /// An integer, typed or given as decimal text (how XML-RPC carries 64-bit ints).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            Value::String(text) => text.parse().ok(),
            _ => None,
        }
    }

    /// A float; JSON senders write whole floats such as `1.0` as `1`, so ints are accepted.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Double(x) => Some(*x),
            Value::Int(n) => Some(*n as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// A datetime's text, typed (XML-RPC) or as a plain string (JSON-RPC).
    pub fn as_datetime(&self) -> Option<&str> {
        match self {
            Value::DateTime(text) | Value::String(text) => Some(text),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_struct(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Struct(members) => Some(members),
            _ => None,
        }
    }

    /// A struct member; `None` when this is not a struct or has no such member.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_struct()?.get(key)
    }

    /// The wire type's name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Int(_) => "an int",
            Value::Double(_) => "a double",
            Value::Bool(_) => "a boolean",
            Value::DateTime(_) => "a datetime",
            Value::Array(_) => "an array",
            Value::Struct(_) => "a struct",
            Value::Nil => "nil",
        }
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Value::String(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Value::String(text)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl From<i32> for Value {
    fn from(n: i32) -> Self {
        Value::Int(n.into())
    }
}

impl From<u32> for Value {
    fn from(n: u32) -> Self {
        Value::Int(n.into())
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Double(x)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(items: Vec<T>) -> Self {
        Value::Array(items.into_iter().map(Into::into).collect())
    }
}

impl<K: Into<String>, V: Into<Value>> From<BTreeMap<K, V>> for Value {
    fn from(members: BTreeMap<K, V>) -> Self {
        Value::Struct(
            members
                .into_iter()
                .map(|(key, value)| (key.into(), value.into()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_are_read_from_typed_values_and_from_xapi_decimal_text() {
        assert_eq!(Value::Int(-7).as_i64(), Some(-7));
        assert_eq!(
            Value::from("2190433320960").as_i64(),
            Some(2_190_433_320_960)
        );
        assert_eq!(Value::from("12 GiB").as_i64(), None);
        assert_eq!(Value::Bool(true).as_i64(), None);
    }

    #[test]
    fn accessors_match_only_their_own_kind() {
        assert_eq!(Value::from("x").as_str(), Some("x"));
        assert_eq!(Value::Int(1).as_str(), None);
        assert_eq!(Value::Int(2).as_f64(), Some(2.0));
        assert_eq!(Value::from(0.5).as_f64(), Some(0.5));
        assert_eq!(Value::from(true).as_bool(), Some(true));
        assert_eq!(Value::from("true").as_bool(), None);
        let when = "20250319T04:16:24Z";
        assert_eq!(Value::DateTime(when.into()).as_datetime(), Some(when));
        assert_eq!(Value::from(when).as_datetime(), Some(when));
        assert_eq!(Value::void(), Value::from(""));
    }

    #[test]
    fn containers_convert_and_index() {
        let record = Value::from(BTreeMap::from([
            ("name_label", Value::from("vm")),
            ("VBDs", Value::from(vec!["OpaqueRef:a", "OpaqueRef:b"])),
        ]));
        assert_eq!(record.get("name_label"), Some(&Value::from("vm")));
        assert_eq!(record.get("missing"), None);
        assert_eq!(
            record
                .get("VBDs")
                .and_then(Value::as_array)
                .map(<[Value]>::len),
            Some(2)
        );
        assert_eq!(Value::from("x").get("name_label"), None);
        assert_eq!(Value::Nil.as_struct(), None);
    }
}
