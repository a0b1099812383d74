//! XML-RPC as XAPI speaks it (protocol reference §2.1, §2.2, §2.6).
//!
//! * Calls: a standard `methodCall` with positional params.
//! * Responses: xapi wraps every result in a struct, `Status`=`Success` + `Value`, or
//!   `Status`=`Failure` + `ErrorDescription`=`[CODE, params…]`. `system.listMethods` is the
//!   exception: its array comes back bare, so a response without `Status` is the result
//!   itself. xapi never sends `<fault>`, but it is understood.
//! * Task results: a bare `<value>…</value>`, an empty string or a bare opaque ref.

mod reader;
mod writer;

#[cfg(test)]
mod tests;

pub use writer::IntEncoding;
/// For test generators, which must produce text XML can carry.
#[cfg(test)]
pub(crate) use writer::is_xml_char;

use reader::{Tag, Token, Within, XmlReader};
use writer::XmlWriter;

use super::error::{RpcCodecError, excerpt};
use super::message::{Call, Response, XapiFault};
use super::value::Value;

/// The XML declaration xapi starts its documents with.
const DECLARATION: &str = r#"<?xml version="1.0"?>"#;

/// The code given to a `<fault>`, as ocaml-rpc does: `["fault", faultCode, faultString]`.
pub const FAULT_CODE: &str = "fault";

/// Decodes a `methodCall` document, as the lab host receives it.
pub fn decode_call(document: &[u8]) -> Result<Call, RpcCodecError> {
    let mut reader = XmlReader::from_bytes(document)?;
    if reader.open(Within::Document, Tag::MethodCall)? {
        return Err(reader.error(
            Within::Element(Tag::MethodCall),
            "empty <methodCall/>: no method name",
        ));
    }
    let name_empty = reader.open(Within::Element(Tag::MethodCall), Tag::MethodName)?;
    let method = reader
        .text_content(Tag::MethodName, name_empty)?
        .trim()
        .to_owned();
    if method.is_empty() {
        return Err(reader.error(Within::Element(Tag::MethodName), "the method name is empty"));
    }
    let mut params = Vec::new();
    // `<params>` may be missing or empty for calls without parameters (`system.listMethods`).
    match reader.next_child(Tag::MethodCall)? {
        Token::Open {
            tag: Tag::Params,
            empty,
        } => {
            if !empty {
                loop {
                    match reader.next_child(Tag::Params)? {
                        Token::Open {
                            tag: Tag::Param,
                            empty: false,
                        } => {
                            let value_empty =
                                reader.open(Within::Element(Tag::Param), Tag::Value)?;
                            params.push(reader.value(value_empty, 0)?);
                            reader.close(Tag::Param)?;
                        }
                        Token::Close => break,
                        other => {
                            return Err(reader.unexpected(
                                Within::Element(Tag::Params),
                                "<param> holding a <value>, or </params>",
                                &other,
                            ));
                        }
                    }
                }
            }
            reader.close(Tag::MethodCall)?;
        }
        Token::Close => {}
        other => {
            return Err(reader.unexpected(
                Within::Element(Tag::MethodCall),
                "<params> or </methodCall>",
                &other,
            ));
        }
    }
    reader.end_of_document()?;
    Ok(Call { method, params })
}

/// Decodes a `methodResponse` document, as the client receives it.
pub fn decode_response(document: &[u8]) -> Result<Response, RpcCodecError> {
    let mut reader = XmlReader::from_bytes(document)?;
    let response = Within::Element(Tag::MethodResponse);
    if reader.open(Within::Document, Tag::MethodResponse)? {
        return Err(reader.error(response, "empty <methodResponse/>: no params and no fault"));
    }
    let decoded = match reader.next_child(Tag::MethodResponse)? {
        Token::Open {
            tag: Tag::Params,
            empty: false,
        } => {
            let param_empty = reader.open(Within::Element(Tag::Params), Tag::Param)?;
            if param_empty {
                return Err(reader.error(Within::Element(Tag::Param), "empty <param/>: no value"));
            }
            let value_empty = reader.open(Within::Element(Tag::Param), Tag::Value)?;
            let value = reader.value(value_empty, 0)?;
            reader.close(Tag::Param)?;
            reader.close(Tag::Params)?;
            unwrap_envelope(value)?
        }
        Token::Open {
            tag: Tag::Fault,
            empty: false,
        } => {
            let value_empty = reader.open(Within::Element(Tag::Fault), Tag::Value)?;
            let fault = reader.value(value_empty, 0)?;
            reader.close(Tag::Fault)?;
            Err(fault_from_struct(&fault)?)
        }
        other => {
            return Err(reader.unexpected(
                response,
                "<params> holding one value, or <fault>",
                &other,
            ));
        }
    };
    reader.close(Tag::MethodResponse)?;
    reader.end_of_document()?;
    Ok(decoded)
}

/// Decodes a task's `result`: an XML-RPC `<value>`, or, as XAPI also stores, an empty string
/// (void) or a bare opaque ref, which are returned as strings.
pub fn decode_value(text: &str) -> Result<Value, RpcCodecError> {
    if !text.trim_start().starts_with('<') {
        return Ok(Value::String(text.trim().to_owned()));
    }
    let mut reader = XmlReader::from_str(text);
    let empty = reader.open(Within::Document, Tag::Value)?;
    let value = reader.value(empty, 0)?;
    reader.end_of_document()?;
    Ok(value)
}

/// Encodes a `methodCall` document.
pub fn encode_call(call: &Call, ints: IntEncoding) -> Vec<u8> {
    let mut writer = XmlWriter::new(ints);
    writer
        .markup(DECLARATION)
        .markup("<methodCall><methodName>")
        .text(&call.method)
        .markup("</methodName><params>");
    for param in &call.params {
        writer.markup("<param>").value(param).markup("</param>");
    }
    writer.markup("</params></methodCall>");
    writer.finish().into_bytes()
}

/// Encodes a response in XAPI's `Status` envelope, with the members in xapi's order.
pub fn encode_response(response: &Response, ints: IntEncoding) -> Vec<u8> {
    let mut writer = XmlWriter::new(ints);
    writer
        .markup(DECLARATION)
        .markup("<methodResponse><params><param><value><struct>");
    match response {
        Ok(value) => writer
            .member("Status", &Value::from("Success"))
            .member("Value", value),
        Err(fault) => writer
            .member("Status", &Value::from("Failure"))
            .member("ErrorDescription", &fault.to_description()),
    };
    writer.markup("</struct></value></param></params></methodResponse>");
    writer.finish().into_bytes()
}

/// Encodes a response without the envelope, as xapi answers `system.listMethods`.
pub fn encode_bare_response(value: &Value, ints: IntEncoding) -> Vec<u8> {
    let mut writer = XmlWriter::new(ints);
    writer
        .markup(DECLARATION)
        .markup("<methodResponse><params><param>")
        .value(value)
        .markup("</param></params></methodResponse>");
    writer.finish().into_bytes()
}

/// Encodes a bare `<value>…</value>`, as XAPI stores a task's `result`.
pub fn encode_value(value: &Value, ints: IntEncoding) -> String {
    let mut writer = XmlWriter::new(ints);
    writer.value(value);
    writer.finish()
}

/// Interprets XAPI's `Status` envelope; a result without one is returned as it is, as XO does.
fn unwrap_envelope(value: Value) -> Result<Response, RpcCodecError> {
    let Value::Struct(mut members) = value else {
        return Ok(Ok(value));
    };
    let invalid = |reason: String| RpcCodecError::Envelope { reason };
    match members.get("Status") {
        None => Ok(Ok(Value::Struct(members))),
        Some(Value::String(status)) if status == "Success" => members
            .remove("Value")
            .map(Ok)
            .ok_or_else(|| invalid("Status is \"Success\" but there is no Value member".into())),
        Some(Value::String(status)) if status == "Failure" => {
            let description = members.get("ErrorDescription").ok_or_else(|| {
                invalid("Status is \"Failure\" but there is no ErrorDescription member".into())
            })?;
            Ok(Err(XapiFault::from_description(description)?))
        }
        Some(other) => {
            let found = match other.as_str() {
                Some(text) => excerpt(text),
                None => other.kind().to_owned(),
            };
            Err(invalid(format!(
                "Status must be \"Success\" or \"Failure\", found {found}"
            )))
        }
    }
}

/// `<fault>`'s struct `{faultCode: int, faultString: string}` as `["fault", code, string]`.
fn fault_from_struct(fault: &Value) -> Result<XapiFault, RpcCodecError> {
    let code = fault.get("faultCode").and_then(|code| match code {
        Value::Int(n) => Some(n.to_string()),
        Value::String(text) => Some(text.clone()),
        _ => None,
    });
    let message = fault.get("faultString").and_then(Value::as_str);
    match (code, message) {
        (Some(code), Some(message)) => Ok(XapiFault::new(FAULT_CODE, [code, message.to_owned()])),
        _ => Err(RpcCodecError::Envelope {
            reason: format!(
                "a <fault> must hold a struct with an int faultCode and a string faultString, found {}",
                fault.kind()
            ),
        }),
    }
}
