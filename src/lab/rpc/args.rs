//! A call's parameters, checked against the message's declaration: arity first (with trailing
//! defaults filled in), then each value's type as a handler reads it.

use std::collections::BTreeMap;

use crate::lab::db::schema::map_value;
use crate::xapi::rpc::{Value, XapiFault};

/// One declared parameter, after the session.
#[derive(Debug, Clone, Copy)]
pub(super) enum Param {
    Required(&'static str),
    /// May be left out by the caller, taking this value (only trailing ones).
    Optional(&'static str, Fallback),
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Fallback {
    Text(&'static str),
    EmptySet,
    EmptyMap,
}

impl Param {
    fn name(self) -> &'static str {
        match self {
            Param::Required(name) | Param::Optional(name, _) => name,
        }
    }
}

impl Fallback {
    fn value(self) -> Value {
        match self {
            Fallback::Text(text) => Value::from(text),
            Fallback::EmptySet => Value::Array(Vec::new()),
            Fallback::EmptyMap => Value::Struct(BTreeMap::new()),
        }
    }
}

/// A call whose arity has been checked: the session (if the message takes one) and every
/// declared parameter, defaults filled in. Not `Debug`: the session is a credential.
pub(super) struct Invocation {
    pub method: String,
    pub session: Option<String>,
    params: &'static [Param],
    values: Vec<Value>,
}

impl Invocation {
    /// Check a call's parameters against `params`. With `takes_session`, the first one is
    /// the session and the rest are counted; counts in the error exclude the session, as
    /// xapi's do, so a call missing even the session reports -1.
    pub fn new(
        method: &str,
        params: &'static [Param],
        call_params: &[Value],
        takes_session: bool,
    ) -> Result<Invocation, XapiFault> {
        let (session, given) = match call_params.split_first() {
            Some((session, rest)) if takes_session => (Some(session), rest),
            _ => (None, call_params),
        };
        let given_count = if takes_session {
            call_params.len() as i64 - 1
        } else {
            call_params.len() as i64
        };
        let required = params
            .iter()
            .filter(|p| matches!(p, Param::Required(_)))
            .count();
        let fits =
            usize::try_from(given_count).is_ok_and(|n| (required..=params.len()).contains(&n));
        if !fits {
            return Err(XapiFault::new(
                "MESSAGE_PARAMETER_COUNT_MISMATCH",
                [
                    method.to_owned(),
                    params.len().to_string(),
                    given_count.to_string(),
                ],
            ));
        }
        // Only optional parameters can be missing once the arity fits.
        let defaults = params[given.len()..].iter().map(|param| match param {
            Param::Optional(_, fallback) => fallback.value(),
            Param::Required(_) => Value::Nil,
        });
        Ok(Invocation {
            method: method.to_owned(),
            // A session that is not even a string is no session: `SESSION_INVALID [""]`.
            session: session.map(|s| s.as_str().unwrap_or_default().to_owned()),
            params,
            values: given.iter().cloned().chain(defaults).collect(),
        })
    }

    pub fn value(&self, index: usize) -> &Value {
        &self.values[index]
    }

    /// `FIELD_TYPE_ERROR [parameter name]`, xapi's answer to an ill-typed parameter.
    fn wrong_type(&self, index: usize) -> XapiFault {
        XapiFault::new("FIELD_TYPE_ERROR", [self.params[index].name()])
    }

    pub fn text(&self, index: usize) -> Result<&str, XapiFault> {
        self.value(index)
            .as_str()
            .ok_or_else(|| self.wrong_type(index))
    }

    /// An int, typed or as decimal text (xapi's XML-RPC form, and what Python callers send).
    pub fn int(&self, index: usize) -> Result<i64, XapiFault> {
        self.value(index)
            .as_i64()
            .ok_or_else(|| self.wrong_type(index))
    }

    pub fn float(&self, index: usize) -> Result<f64, XapiFault> {
        let value = self.value(index);
        value
            .as_f64()
            .or_else(|| value.as_str().and_then(|t| t.trim().parse().ok()))
            .ok_or_else(|| self.wrong_type(index))
    }

    pub fn bool(&self, index: usize) -> Result<bool, XapiFault> {
        self.value(index)
            .as_bool()
            .ok_or_else(|| self.wrong_type(index))
    }

    pub fn strings(&self, index: usize) -> Result<Vec<String>, XapiFault> {
        let items = self
            .value(index)
            .as_array()
            .ok_or_else(|| self.wrong_type(index))?;
        items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| self.wrong_type(index))
            })
            .collect()
    }

    /// A `(string -> string)` map; scalar values are taken as their text.
    pub fn map(&self, index: usize) -> Result<BTreeMap<String, String>, XapiFault> {
        let members = self
            .value(index)
            .as_struct()
            .ok_or_else(|| self.wrong_type(index))?;
        members
            .iter()
            .map(|(key, value)| {
                map_value(value)
                    .map(|text| (key.clone(), text))
                    .map_err(|_| self.wrong_type(index))
            })
            .collect()
    }

    /// A record given to a constructor (`VDI.create`, …).
    pub fn record(&self, index: usize) -> Result<&BTreeMap<String, Value>, XapiFault> {
        self.value(index)
            .as_struct()
            .ok_or_else(|| self.wrong_type(index))
    }
}
