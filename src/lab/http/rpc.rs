//! The RPC endpoints: JSON-RPC v1/v2 on `POST /jsonrpc`, XML-RPC on every other POST path
//! (protocol reference §2.1). Calls run on a blocking thread (some do file I/O); a waiting
//! `event.from` is then awaited without one, and ends if the client goes away.
//!
//! The body is read before anything can authenticate it (the session is inside), so it is
//! bounded in size, in time, and in memory: it is copied into one buffer as it arrives, so a
//! body sent a byte per TCP segment costs a byte per byte, not a hyper read buffer per frame;
//! and beyond its first [`FREE_PER_BODY`] bytes it draws on a budget all connections share,
//! so that clients holding large bodies half-sent cannot make the host hold more than that.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Incoming;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::reply::{self, Reply};
use super::request::content_length;
use super::transfer::internal;
use crate::lab::Lab;
use crate::lab::rpc::{Dispatched, LIST_METHODS};
use crate::xapi::rpc::xmlrpc::IntEncoding;
use crate::xapi::rpc::{Call, Response, jsonrpc, xmlrpc};

/// The largest RPC request read. The largest real calls (a VM's `other_config` with Xen
/// Orchestra's metadata) take a few KiB; every connection may hold this much unauthenticated.
pub const MAX_RPC_BODY: usize = 1 << 20;

/// The buffer a body starts in, grown as bytes arrive: a declared length is not trusted
/// with an allocation.
const FIRST_BUFFER: usize = 16 << 10;
/// The bytes of a body read without drawing on the shared budget: every real call fits.
const FREE_PER_BODY: usize = 64 << 10;
/// The bytes beyond their free part that the RPC bodies being read may hold together.
const SHARED_BUDGET: usize = 32 << 20;
/// The budget's grain.
const BUDGET_UNIT: usize = 4 << 10;

/// How the server reads RPC bodies: the time one may take, and the budget they share.
pub(super) struct BodyReading {
    timeout: Duration,
    budget: Semaphore,
}

impl BodyReading {
    pub fn new(timeout: Duration) -> BodyReading {
        BodyReading {
            timeout,
            budget: Semaphore::new(SHARED_BUDGET / BUDGET_UNIT),
        }
    }
}

/// npm `xen-api` compares this exactly, without a charset, to pick JSON-RPC.
const JSON: &str = "application/json";
const XML: &str = "text/xml";

pub(super) async fn json_rpc(lab: Lab, request: Request<Incoming>, reading: &BodyReading) -> Reply {
    let decoded = match read_body(request, reading).await {
        // The body and its share of the budget go once decoded.
        Ok((body, _budget)) => jsonrpc::decode_request(&body),
        Err(refused) => return refused,
    };
    let request = match decoded {
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

pub(super) async fn xml_rpc(lab: Lab, request: Request<Incoming>, reading: &BodyReading) -> Reply {
    let decoded = match read_body(request, reading).await {
        Ok((body, _budget)) => xmlrpc::decode_call(&body),
        Err(refused) => return refused,
    };
    let call_ = match decoded {
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

/// Dispatch on a blocking thread; await a wait on none.
async fn call(lab: Lab, call: Call) -> Result<Response, Reply> {
    let dispatcher = lab.clone();
    let dispatched = tokio::task::spawn_blocking(move || dispatcher.dispatch(&call))
        .await
        .map_err(|e| reply::internal_error(&internal(format!("RPC: {e}"))))?;
    Ok(match dispatched {
        Dispatched::Answer(answer) => answer,
        Dispatched::Wait(wait) => wait.wait(lab).await,
    })
}

/// The whole request body in one buffer, with the share of the budget it holds: refused with
/// 413 past [`MAX_RPC_BODY`] whether or not it declared its length, with 503 when the budget
/// is spent, and with 408 if it takes longer than its time to arrive.
async fn read_body<'a>(
    request: Request<Incoming>,
    reading: &'a BodyReading,
) -> Result<(Bytes, Option<SemaphorePermit<'a>>), Reply> {
    let declared =
        content_length(request.headers()).map_err(|e| reply::bad_request(&internal(e)))?;
    if declared.is_some_and(|n| n > MAX_RPC_BODY as u64) {
        return Err(reply::payload_too_large(MAX_RPC_BODY));
    }
    let first = declared.map_or(FIRST_BUFFER, |n| n.min(FIRST_BUFFER as u64) as usize);
    let mut buffer = BytesMut::with_capacity(first);
    let mut body = request.into_body();
    let mut held: Option<SemaphorePermit<'a>> = None;
    let collect = async {
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| reply::bad_request(&internal(format!("reading the request: {e}"))))?;
            // Trailers carry nothing a call needs.
            if let Ok(data) = frame.into_data() {
                let len = buffer.len() + data.len();
                if len > MAX_RPC_BODY {
                    return Err(reply::payload_too_large(MAX_RPC_BODY));
                }
                if !draw(&reading.budget, &mut held, len) {
                    return Err(reply::busy());
                }
                // The frame, and the read buffer it pins, goes as soon as it is copied.
                buffer.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(reading.timeout, collect).await {
        Ok(Ok(())) => Ok((buffer.freeze(), held)),
        Ok(Err(refused)) => Err(refused),
        Err(_) => Err(reply::request_timeout(reading.timeout)),
    }
}

/// Hold enough of `budget` for a body of `len` bytes; `false` if it is spent.
fn draw<'a>(budget: &'a Semaphore, held: &mut Option<SemaphorePermit<'a>>, len: usize) -> bool {
    let needed = len.saturating_sub(FREE_PER_BODY).div_ceil(BUDGET_UNIT);
    let holding = held.as_ref().map_or(0, SemaphorePermit::num_permits);
    if needed <= holding {
        return true;
    }
    let Some(more) = u32::try_from(needed - holding)
        .ok()
        .and_then(|n| budget.try_acquire_many(n).ok())
    else {
        return false;
    };
    match held {
        Some(permit) => permit.merge(more),
        None => *held = Some(more),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_draw_on_the_budget_only_beyond_their_free_part_and_give_it_back() {
        let budget = Semaphore::new(4);
        let mut held = None;
        assert!(draw(&budget, &mut held, FREE_PER_BODY));
        assert!(held.is_none());
        assert!(draw(&budget, &mut held, FREE_PER_BODY + 1));
        assert_eq!(held.as_ref().map(SemaphorePermit::num_permits), Some(1));
        assert!(draw(&budget, &mut held, FREE_PER_BODY + 4 * BUDGET_UNIT));
        assert_eq!(budget.available_permits(), 0);
        assert!(!draw(
            &budget,
            &mut held,
            FREE_PER_BODY + 4 * BUDGET_UNIT + 1
        ));
        drop(held);
        assert_eq!(budget.available_permits(), 4);
    }
}
