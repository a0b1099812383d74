//! JSON-RPC v1 and v2 as XAPI speaks it on `/jsonrpc` (protocol reference §2.1, §4).
//!
//! | version | success | failure |
//! |---|---|---|
//! | v1 | `{"result":V,"error":null,"id":ID}` | `{"result":null,"error":["CODE","p1",…],"id":ID}` |
//! | v2 | `{"jsonrpc":"2.0","result":V,"id":ID}` | `{"jsonrpc":"2.0","error":{"code":1,"message":"CODE","data":["p1",…]},"id":ID}` |
//!
//! There is no `Status` envelope: the result is `result` itself. A request's version is
//! `"jsonrpc":"2.0"` (v2) or its absence (v1), and the response answers in the same version.

mod value_serde;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::Serialize;

use super::error::{RpcCodecError, excerpt};
use super::message::{Call, Response, XapiFault};
use super::value::Value;

/// The JSON-RPC version of a request, which its response follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonRpcVersion {
    /// No `"jsonrpc"` member.
    V1,
    /// `"jsonrpc":"2.0"`, as npm `xen-api` sends.
    V2,
}

/// A request id, echoed in the response. XAPI answers every call, so there is always one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RequestId {
    Int(i64),
    String(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct JsonRpcRequest {
    pub version: JsonRpcVersion,
    pub id: RequestId,
    pub call: Call,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JsonRpcResponse {
    pub version: JsonRpcVersion,
    pub id: RequestId,
    pub response: Response,
}

/// The `code` XAPI puts in every v2 error object; the XAPI code goes in `message`.
pub const V2_ERROR_CODE: i64 = 1;

const JSONRPC_V2: &str = "2.0";

/// Decodes a request, as the lab host receives it.
///
/// Notifications (no `id`, or `null`) are rejected as xapi rejects them. v2 `params` may be
/// omitted or `null` (no params) or an object (one struct param), as in xapi.
pub fn decode_request(document: &[u8]) -> Result<JsonRpcRequest, RpcCodecError> {
    let invalid = |reason: String| RpcCodecError::JsonRpc {
        message: "request",
        reason,
    };
    let mut fields = top_level_object(value_serde::decode_document(document)?, "request")?;
    let version = version(fields.remove("jsonrpc"), "request")?;
    let method = match fields.remove("method") {
        Some(Value::String(method)) => method,
        Some(other) => {
            return Err(invalid(format!(
                "\"method\" must be a string, found {}",
                other.kind()
            )));
        }
        None => return Err(invalid("missing \"method\"".into())),
    };
    let params = match (version, fields.remove("params")) {
        (_, Some(Value::Array(params))) => params,
        (JsonRpcVersion::V2, None | Some(Value::Nil)) => Vec::new(),
        (JsonRpcVersion::V2, Some(by_name @ Value::Struct(_))) => vec![by_name],
        (JsonRpcVersion::V1, None) => {
            return Err(invalid(
                "missing \"params\", which JSON-RPC 1.0 requires".into(),
            ));
        }
        (_, Some(other)) => {
            return Err(invalid(format!(
                "\"params\" must be an array, found {}",
                other.kind()
            )));
        }
    };
    let id = request_id(fields.remove("id"), "request")?;
    Ok(JsonRpcRequest {
        version,
        id,
        call: Call { method, params },
    })
}

/// Encodes a request, as the client sends it.
pub fn encode_request(request: &JsonRpcRequest) -> Vec<u8> {
    #[derive(Serialize)]
    struct Wire<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        jsonrpc: Option<&'static str>,
        method: &'a str,
        params: &'a [Value],
        id: &'a RequestId,
    }
    to_json(&Wire {
        jsonrpc: v2_marker(request.version),
        method: &request.call.method,
        params: &request.call.params,
        id: &request.id,
    })
}

/// Decodes a response, as the client receives it.
///
/// Either error shape is understood in either version: the v1 array `[CODE, params…]` and
/// the v2 object `{code, message: CODE, data: [params…]}`. An `"error": null` is no error.
pub fn decode_response(document: &[u8]) -> Result<JsonRpcResponse, RpcCodecError> {
    let invalid = |reason: &str| RpcCodecError::JsonRpc {
        message: "response",
        reason: reason.to_owned(),
    };
    let mut fields = top_level_object(value_serde::decode_document(document)?, "response")?;
    let version = version(fields.remove("jsonrpc"), "response")?;
    let id = request_id(fields.remove("id"), "response")?;
    let result = fields.remove("result");
    let error = fields.remove("error").filter(|error| *error != Value::Nil);
    let response = match (result, error) {
        (Some(result), None) => Ok(result),
        (None | Some(Value::Nil), Some(error)) => Err(fault_from_error(error)?),
        (Some(_), Some(_)) => return Err(invalid("both \"result\" and \"error\" are set")),
        (None, None) => return Err(invalid("neither \"result\" nor \"error\" is present")),
    };
    Ok(JsonRpcResponse {
        version,
        id,
        response,
    })
}

/// Encodes a response in the request's version, member for member as xapi writes it.
pub fn encode_response(response: &JsonRpcResponse) -> Vec<u8> {
    #[derive(Serialize)]
    struct V1<'a> {
        result: Option<&'a Value>,
        error: Option<Value>,
        id: &'a RequestId,
    }
    #[derive(Serialize)]
    struct V2<'a> {
        jsonrpc: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<V2Error<'a>>,
        id: &'a RequestId,
    }
    #[derive(Serialize)]
    struct V2Error<'a> {
        code: i64,
        message: &'a str,
        data: &'a [String],
    }
    let id = &response.id;
    match (response.version, &response.response) {
        (JsonRpcVersion::V1, Ok(result)) => to_json(&V1 {
            result: Some(result),
            error: None,
            id,
        }),
        (JsonRpcVersion::V1, Err(fault)) => to_json(&V1 {
            result: None,
            error: Some(fault.to_description()),
            id,
        }),
        (JsonRpcVersion::V2, Ok(result)) => to_json(&V2 {
            jsonrpc: JSONRPC_V2,
            result: Some(result),
            error: None,
            id,
        }),
        (JsonRpcVersion::V2, Err(fault)) => to_json(&V2 {
            jsonrpc: JSONRPC_V2,
            result: None,
            error: Some(V2Error {
                code: V2_ERROR_CODE,
                message: &fault.code,
                data: &fault.params,
            }),
            id,
        }),
    }
}

fn v2_marker(version: JsonRpcVersion) -> Option<&'static str> {
    match version {
        JsonRpcVersion::V1 => None,
        JsonRpcVersion::V2 => Some(JSONRPC_V2),
    }
}

fn to_json(message: &impl Serialize) -> Vec<u8> {
    // Serialising into a Vec cannot fail: there is no I/O, every map key is a string, and
    // serde_json writes non-finite doubles as null rather than failing.
    serde_json::to_vec(message).expect("a JSON-RPC message always serialises")
}

fn top_level_object(
    document: Value,
    message: &'static str,
) -> Result<BTreeMap<String, Value>, RpcCodecError> {
    match document {
        Value::Struct(fields) => Ok(fields),
        other => Err(RpcCodecError::JsonRpc {
            message,
            reason: format!("expected a JSON object, found {}", other.kind()),
        }),
    }
}

fn version(marker: Option<Value>, message: &'static str) -> Result<JsonRpcVersion, RpcCodecError> {
    match marker {
        None => Ok(JsonRpcVersion::V1),
        Some(Value::String(text)) if text == JSONRPC_V2 => Ok(JsonRpcVersion::V2),
        Some(other) => Err(RpcCodecError::JsonRpc {
            message,
            reason: format!(
                "\"jsonrpc\" must be \"2.0\" or absent (1.0), found {}",
                other
                    .as_str()
                    .map_or_else(|| other.kind().to_owned(), excerpt)
            ),
        }),
    }
}

fn request_id(id: Option<Value>, message: &'static str) -> Result<RequestId, RpcCodecError> {
    let invalid = |reason: String| RpcCodecError::JsonRpc { message, reason };
    match id {
        Some(Value::Int(n)) => Ok(RequestId::Int(n)),
        Some(Value::String(text)) => Ok(RequestId::String(text)),
        None | Some(Value::Nil) => Err(invalid(
            "Invalid field 'id': it is missing or null, but XAPI answers every call, so notifications are not supported".into(),
        )),
        Some(other) => Err(invalid(format!(
            "Invalid field 'id': it must be a string or an integer, found {}",
            other.kind()
        ))),
    }
}

/// A v1 error array `[CODE, params…]` or a v2 error object `{code, message, data}`.
/// The object needs an integer `code` and a string `message`, as npm `xen-api`'s parser demands.
fn fault_from_error(error: Value) -> Result<XapiFault, RpcCodecError> {
    let invalid = |reason: String| RpcCodecError::JsonRpc {
        message: "response",
        reason,
    };
    let Value::Struct(object) = error else {
        return XapiFault::from_description(&error);
    };
    if !matches!(object.get("code"), Some(Value::Int(_))) {
        return Err(invalid("the error object has no integer \"code\"".into()));
    }
    let Some(Value::String(code)) = object.get("message") else {
        return Err(invalid(
            "the error object has no string \"message\" (the XAPI error code)".into(),
        ));
    };
    let params = match object.get("data") {
        None | Some(Value::Nil) => Vec::new(),
        Some(Value::Array(data)) => data
            .iter()
            .enumerate()
            .map(|(index, param)| {
                param.as_str().map(str::to_owned).ok_or_else(|| {
                    invalid(format!(
                        "error \"data\" item {index} must be a string, found {}",
                        param.kind()
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(invalid(format!(
                "error \"data\" must be an array, found {}",
                other.kind()
            )));
        }
    };
    Ok(XapiFault {
        code: code.clone(),
        params,
    })
}
