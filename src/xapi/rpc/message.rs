//! The messages both wire formats carry: a call, and a result or a XAPI error.

use super::error::RpcCodecError;
use super::value::Value;

/// A method call with positional parameters, e.g. `VM.get_record(session, vm)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: String,
    pub params: Vec<Value>,
}

impl Call {
    pub fn new(method: impl Into<String>, params: Vec<Value>) -> Self {
        Self {
            method: method.into(),
            params,
        }
    }
}

/// A XAPI error: a code such as `SESSION_INVALID` and its string parameters.
///
/// XAPI writes it as `[CODE, params…]` in XML-RPC `ErrorDescription`, JSON-RPC v1 `error`
/// and task `error_info`, and as `{code: 1, message: CODE, data: [params…]}` in JSON-RPC v2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("XAPI error {code} {params:?}")]
pub struct XapiFault {
    pub code: String,
    pub params: Vec<String>,
}

/// What a call returns: its value, or the XAPI error it failed with.
pub type Response = Result<Value, XapiFault>;

impl XapiFault {
    pub fn new<P: Into<String>>(
        code: impl Into<String>,
        params: impl IntoIterator<Item = P>,
    ) -> Self {
        Self {
            code: code.into(),
            params: params.into_iter().map(Into::into).collect(),
        }
    }

    /// `[CODE, params…]`, as XAPI writes an error description.
    pub fn to_description(&self) -> Value {
        Value::Array(
            std::iter::once(&self.code)
                .chain(&self.params)
                .map(|text| Value::String(text.clone()))
                .collect(),
        )
    }

    /// Reads an error description `[CODE, params…]`, e.g. a task's `error_info`.
    pub fn from_description(description: &Value) -> Result<Self, RpcCodecError> {
        let invalid = |reason: String| RpcCodecError::Envelope { reason };
        let items = description.as_array().ok_or_else(|| {
            invalid(format!(
                "an error description must be an array [CODE, params…], found {}",
                description.kind()
            ))
        })?;
        let mut texts = items.iter().enumerate().map(|(index, item)| {
            item.as_str().map(str::to_owned).ok_or_else(|| {
                invalid(format!(
                    "error description item {index} must be a string, found {}",
                    item.kind()
                ))
            })
        });
        let code = texts
            .next()
            .ok_or_else(|| invalid("the error description is empty: no error code".into()))??;
        let params = texts.collect::<Result<_, _>>()?;
        Ok(Self { code, params })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_round_trips() {
        let fault = XapiFault::new("HANDLE_INVALID", ["VM", "OpaqueRef:dead"]);
        let description = fault.to_description();
        assert_eq!(
            description,
            Value::from(vec!["HANDLE_INVALID", "VM", "OpaqueRef:dead"])
        );
        assert_eq!(XapiFault::from_description(&description).unwrap(), fault);
    }

    #[test]
    fn malformed_descriptions_are_rejected_with_the_reason() {
        let empty = XapiFault::from_description(&Value::Array(vec![])).unwrap_err();
        assert!(empty.to_string().contains("no error code"), "{empty}");
        let not_array = XapiFault::from_description(&Value::from("X")).unwrap_err();
        assert!(
            not_array.to_string().contains("found a string"),
            "{not_array}"
        );
        let bad_item = XapiFault::from_description(&Value::Array(vec!["X".into(), Value::Int(3)]))
            .unwrap_err();
        assert!(bad_item.to_string().contains("item 1"), "{bad_item}");
    }

    #[test]
    fn fault_displays_code_and_params() {
        let fault = XapiFault::new("SESSION_INVALID", ["OpaqueRef:x"]);
        assert_eq!(
            fault.to_string(),
            "XAPI error SESSION_INVALID [\"OpaqueRef:x\"]"
        );
    }
}
