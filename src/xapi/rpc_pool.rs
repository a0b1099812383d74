//! HTTP/1.1 connections kept open between RPC calls to one host. A replication cycle makes a
//! hundred calls; opening a TCP connection (and, for https, a TLS session) for each one costs
//! a round trip or three per call, which on a WAN link is most of the cycle's fixed cost.
//!
//! A connection goes back to the pool only once its answer has been read whole, so a call
//! never queues behind another's answer (an `event.from` may be held open for seconds); a
//! call that finds no idle connection opens its own. A host that closes idle connections, or
//! answers `Connection: close`, costs nothing but the reconnect: closed senders are dropped,
//! and a request that could not be written to a pooled connection is sent again on a new one
//! (nothing of it reached the host, so repeating it is safe for any method).
//!
//! A request written to a connection the host closed at that very moment fails, as in any
//! HTTP client, and is not repeated: it may have reached the host. Connections idle for more
//! than [`MAX_IDLE_AGE`] are not reused, so that race needs a host that drops idle connections
//! within seconds; the calls of a cycle come milliseconds apart, and the idle time across a
//! long transfer is well past the limit.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};

use super::connection::{Endpoint, TransportError};

/// Idle connections kept per host: calls are sequential, with the odd concurrent one.
const MAX_IDLE: usize = 2;

/// An idle connection older than this is closed rather than reused.
pub const MAX_IDLE_AGE: Duration = Duration::from_secs(5);

pub type RpcSender = SendRequest<Full<Bytes>>;

#[derive(Default)]
pub struct RpcPool {
    /// Each with the moment it went idle.
    idle: Mutex<Vec<(Instant, RpcSender)>>,
}

impl RpcPool {
    /// Send `request` on an idle connection, or on a new one. Returns the connection with the
    /// answer; hand it to [`RpcPool::give_back`] once the answer's body is read.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, RpcSender), TransportError> {
        let request = match self.take() {
            Some(mut sender) => match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, sender)),
                Err(mut failed) => match failed.take_message() {
                    // Never written: the host closed the idle connection first.
                    Some(request) => request,
                    None => return Err(endpoint.http_error(&failed.into_error())),
                },
            },
            None => request,
        };
        let mut sender = endpoint.handshake::<Full<Bytes>>().await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| endpoint.http_error(&e))?;
        Ok((response, sender))
    }

    /// Keep `sender` for the next call, unless its connection closed or the pool is full.
    pub fn give_back(&self, sender: RpcSender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push((Instant::now(), sender));
        }
    }

    fn take(&self) -> Option<RpcSender> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((since, sender)) = idle.pop() {
            if since.elapsed() < MAX_IDLE_AGE && sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }
}
