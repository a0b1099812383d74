//! The RPC endpoints: JSON-RPC v1/v2 on `POST /jsonrpc`, XML-RPC on every other POST path
//! (protocol reference §2.1). Calls run on a blocking thread: some wait (`event.from`) and
//! some do file I/O.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::Request;
use hyper::body::Incoming;

use super::reply::{self, Reply};
use super::request::content_length;
use super::transfer::internal;
use crate::lab::Lab;
use crate::lab::rpc::LIST_METHODS;
use crate::xapi::rpc::xmlrpc::IntEncoding;
use crate::xapi::rpc::{Call, Response, jsonrpc, xmlrpc};

/// The largest RPC request read: far above any real call, and it bounds memory.
pub(super) const MAX_RPC_BODY: usize = 16 << 20;

/// npm `xen-api` compares this exactly, without a charset, to pick JSON-RPC.
const JSON: &str = "application/json";
const XML: &str = "text/xml";

pub(super) async fn json_rpc(lab: Lab, request: Request<Incoming>) -> Reply {
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let request = match jsonrpc::decode_request(&body) {
        Ok(request) => request,
        // xapi answers a malformed request with its 500 page (wire-protocol.md, "Errors").
        Err(e) => return reply::internal_error(&internal(format!("JSON-RPC request: {e}"))),
    };
    let response = match call(lab, request.call).await {
        Ok(response) => response,
        Err(failed) => return failed,
    };
    let encoded = jsonrpc::encode_response(&jsonrpc::JsonRpcResponse {
        version: request.version,
        id: request.id,
        response,
    });
    reply::rpc(JSON, encoded)
}

pub(super) async fn xml_rpc(lab: Lab, request: Request<Incoming>) -> Reply {
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let call_ = match xmlrpc::decode_call(&body) {
        Ok(call) => call,
        Err(e) => return reply::internal_error(&internal(format!("XML-RPC request: {e}"))),
    };
    let bare = call_.method == LIST_METHODS;
    let response = match call(lab, call_).await {
        Ok(response) => response,
        Err(failed) => return failed,
    };
    let encoded = match &response {
        // xapi answers `system.listMethods` without its Status envelope.
        Ok(value) if bare => xmlrpc::encode_bare_response(value, IntEncoding::AsString),
        _ => xmlrpc::encode_response(&response, IntEncoding::AsString),
    };
    reply::rpc(XML, encoded)
}

async fn call(lab: Lab, call: Call) -> Result<Response, Reply> {
    tokio::task::spawn_blocking(move || lab.handle(&call))
        .await
        .map_err(|e| reply::internal_error(&internal(format!("RPC: {e}"))))
}

/// The whole request body, refused with 413 past [`MAX_RPC_BODY`] whether or not it
/// declared its length.
async fn read_body(request: Request<Incoming>) -> Result<Bytes, Reply> {
    let declared =
        content_length(request.headers()).map_err(|e| reply::bad_request(&internal(e)))?;
    if declared.is_some_and(|n| n > MAX_RPC_BODY as u64) {
        return Err(reply::payload_too_large(MAX_RPC_BODY));
    }
    match Limited::new(request.into_body(), MAX_RPC_BODY)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(reply::payload_too_large(MAX_RPC_BODY))
        }
        Err(e) => Err(reply::bad_request(&internal(format!(
            "reading the request: {e}"
        )))),
    }
}
