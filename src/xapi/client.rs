//! An async XAPI client: JSON-RPC first, falling back to XML-RPC, logging in from the URL's
//! credentials, logging in again once on `SESSION_INVALID`, and retrying idempotent reads.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::body::Body;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};

use super::connection::{Endpoint, TransportError};
use super::rpc::{Call, RpcCodecError, Value, XapiFault, jsonrpc, xmlrpc};
use super::rpc_pool::RpcPool;
use super::tls::Trust;
use super::{HostUrl, Secret};

/// RPC answers larger than this are refused: a host's whole database as `get_all_records`
/// stays far below it, and it bounds what a misbehaving host can make us buffer.
const MAX_RPC_RESPONSE: usize = 256 << 20;
const READ_RETRIES: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{host}: {method}: {fault}")]
    Xapi {
        host: String,
        method: String,
        fault: XapiFault,
    },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{host}: {method}: {message}")]
    Protocol {
        host: String,
        method: String,
        message: String,
    },
    #[error("{host}: no user name given (put it in the URL, e.g. https://root@host)")]
    NoCredentials { host: String },
}

impl ClientError {
    /// The XAPI error code, when the host answered with one.
    pub fn xapi_code(&self) -> Option<&str> {
        match self {
            ClientError::Xapi { fault, .. } => Some(&fault.code),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    JsonRpc,
    XmlRpc,
}

/// A logged-in connection to one host.
pub struct XapiClient {
    endpoint: Endpoint,
    username: String,
    password: Secret,
    protocol: Mutex<Option<Protocol>>,
    session: Mutex<Secret>,
    call_timeout: Duration,
    connections: RpcPool,
    /// RPC requests sent, logins and retries included: what a cycle costs the host.
    requests: AtomicU64,
}

impl std::fmt::Debug for XapiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XapiClient")
            .field("host", &self.endpoint.url().to_string())
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl XapiClient {
    /// Connect and log in. The password is the URL's, unless `password` overrides it (read
    /// from a file or the environment, which keeps it out of `ps`).
    pub async fn connect(
        url: HostUrl,
        trust: &Trust,
        password: Option<Secret>,
    ) -> Result<XapiClient, ClientError> {
        let username = url
            .username
            .clone()
            .ok_or_else(|| ClientError::NoCredentials {
                host: url.to_string(),
            })?;
        let password = password
            .or_else(|| url.password.clone())
            .unwrap_or_default();
        let client = XapiClient {
            endpoint: Endpoint::new(url, trust)?,
            username,
            password,
            protocol: Mutex::new(None),
            session: Mutex::new(Secret::default()),
            call_timeout: Duration::from_secs(120),
            connections: RpcPool::default(),
            requests: AtomicU64::new(0),
        };
        client.login().await?;
        Ok(client)
    }

    /// Allow each call this long (2 minutes by default), for calls known to take longer.
    pub fn with_call_timeout(mut self, timeout: Duration) -> XapiClient {
        self.call_timeout = timeout;
        self
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn host(&self) -> String {
        self.endpoint.url().to_string()
    }

    /// RPC requests sent so far.
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The current session id, for data-plane requests.
    pub fn session_id(&self) -> Secret {
        self.session.lock().map(|s| s.clone()).unwrap_or_default()
    }

    async fn login(&self) -> Result<(), ClientError> {
        let call = Call::new(
            "session.login_with_password",
            vec![
                Value::from(self.username.as_str()),
                Value::from(self.password.expose()),
                Value::from("1.1"),
                Value::from("vhdsync"),
            ],
        );
        let session = self.send(&call).await?;
        let session = session.as_str().ok_or_else(|| {
            self.protocol_error(&call.method, "login returned no session reference".into())
        })?;
        if let Ok(mut slot) = self.session.lock() {
            *slot = Secret::new(session);
        }
        Ok(())
    }

    pub async fn logout(&self) -> Result<(), ClientError> {
        let session = self.session_id();
        let result = self
            .send(&Call::new(
                "session.logout",
                vec![Value::from(session.expose())],
            ))
            .await;
        if let Ok(mut slot) = self.session.lock() {
            *slot = Secret::default();
        }
        result.map(|_| ())
    }

    /// Call `method` with the session prepended to `params`. One re-login on
    /// `SESSION_INVALID`; transport failures of idempotent reads (`*.get_*`) are retried.
    pub async fn call(&self, method: &str, params: Vec<Value>) -> Result<Value, ClientError> {
        let idempotent = is_idempotent(method);
        let mut relogged = false;
        let mut attempt = 0;
        loop {
            let mut full = Vec::with_capacity(params.len() + 1);
            full.push(Value::from(self.session_id().expose()));
            full.extend(params.iter().cloned());
            match self.send(&Call::new(method, full)).await {
                Err(ClientError::Xapi { ref fault, .. })
                    if fault.code == "SESSION_INVALID" && !relogged =>
                {
                    relogged = true;
                    self.login().await?;
                }
                Err(ClientError::Transport(e)) if idempotent && attempt + 1 < READ_RETRIES => {
                    attempt += 1;
                    tracing::warn!(host = %self.host(), method, attempt, "retrying read: {e}");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// Call `method`, whose answer is a string (a new object's reference, a uuid): any other
    /// answer, or an empty string, is a protocol error naming the host and the method.
    pub async fn call_for_string(
        &self,
        method: &str,
        params: Vec<Value>,
    ) -> Result<String, ClientError> {
        match self.call(method, params).await? {
            Value::String(answer) if !answer.is_empty() => Ok(answer),
            other => {
                let mut shown = format!("{other:?}");
                shown.truncate(120);
                Err(self.protocol_error(method, format!("expected a string, got {shown}")))
            }
        }
    }

    /// Call a method that takes no session (`system.listMethods`).
    pub async fn call_without_session(
        &self,
        method: &str,
        params: Vec<Value>,
    ) -> Result<Value, ClientError> {
        self.send(&Call::new(method, params)).await
    }

    async fn send(&self, call: &Call) -> Result<Value, ClientError> {
        let known = self.protocol.lock().ok().and_then(|p| *p);
        match known {
            Some(protocol) => self.send_with(protocol, call).await,
            None => match self.send_with(Protocol::JsonRpc, call).await {
                Err(ClientError::Protocol { .. }) => {
                    let result = self.send_with(Protocol::XmlRpc, call).await;
                    if result.is_ok() || matches!(result, Err(ClientError::Xapi { .. })) {
                        self.remember(Protocol::XmlRpc);
                    }
                    result
                }
                result => {
                    if result.is_ok() || matches!(result, Err(ClientError::Xapi { .. })) {
                        self.remember(Protocol::JsonRpc);
                    }
                    result
                }
            },
        }
    }

    fn remember(&self, protocol: Protocol) {
        if let Ok(mut slot) = self.protocol.lock() {
            *slot = Some(protocol);
        }
    }

    async fn send_with(&self, protocol: Protocol, call: &Call) -> Result<Value, ClientError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        // The method only: the parameters hold the session, and a login's the password.
        tracing::trace!(host = %self.host(), method = %call.method, json = protocol == Protocol::JsonRpc, "RPC");
        let url = self.endpoint.url();
        let (path, content_type, body) = match protocol {
            Protocol::JsonRpc => (
                "/jsonrpc",
                "application/json",
                jsonrpc::encode_request(&jsonrpc::JsonRpcRequest {
                    version: jsonrpc::JsonRpcVersion::V2,
                    id: jsonrpc::RequestId::Int(0),
                    call: call.clone(),
                }),
            ),
            Protocol::XmlRpc => (
                "/",
                "text/xml",
                xmlrpc::encode_call(call, xmlrpc::IntEncoding::AsString),
            ),
        };
        let request = Request::post(format!("{}{path}", url.path))
            .header(HOST, url.authority())
            .header(CONTENT_TYPE, content_type)
            .header(CONTENT_LENGTH, body.len())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| self.protocol_error(&call.method, e.to_string()))?;
        let exchange = async {
            let (response, connection) = self.connections.send(&self.endpoint, request).await?;
            let status = response.status();
            let is_json = response
                .headers()
                .get(CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes() == b"application/json");
            // A length claimed past the cap is refused from the header, before any of the
            // body is read: a host trickling a 10 GiB answer is not waited for.
            let claimed = response.body().size_hint().lower();
            if claimed > MAX_RPC_RESPONSE as u64 {
                return Err(self.protocol_error(
                    &call.method,
                    format!("the answer claims {claimed} bytes, more than the {MAX_RPC_RESPONSE} accepted"),
                ));
            }
            let body = Limited::new(response.into_body(), MAX_RPC_RESPONSE)
                .collect()
                .await
                .map_err(|e| self.protocol_error(&call.method, format!("reading the answer: {e}")))?
                .to_bytes();
            self.connections.give_back(connection);
            Ok::<_, ClientError>((status, is_json, body))
        };
        let (status, is_json, body) = tokio::time::timeout(self.call_timeout, exchange)
            .await
            .map_err(|_| TransportError::Timeout {
                host: self.host(),
                after: self.call_timeout,
                during: "RPC",
            })??;
        if !status.is_success() {
            return Err(self.protocol_error(&call.method, format!("HTTP status {status}")));
        }
        let decoded = match protocol {
            Protocol::JsonRpc if !is_json => {
                return Err(self.protocol_error(&call.method, "no JSON-RPC endpoint".into()));
            }
            Protocol::JsonRpc => jsonrpc::decode_response(&body).map(|r| r.response),
            Protocol::XmlRpc => xmlrpc::decode_response(&body),
        };
        let response =
            decoded.map_err(|e: RpcCodecError| self.protocol_error(&call.method, e.to_string()))?;
        response.map_err(|fault| ClientError::Xapi {
            host: self.host(),
            method: call.method.clone(),
            fault: self.redact(fault),
        })
    }

    /// XAPI puts the session id in `SESSION_INVALID`'s parameters; keep it out of errors.
    fn redact(&self, mut fault: XapiFault) -> XapiFault {
        let session = self.session_id();
        for p in &mut fault.params {
            if !session.is_empty() && p.contains(session.expose()) {
                *p = p.replace(session.expose(), "***");
            }
            // A whole parameter only: a short password ("lab") would otherwise mangle every
            // parameter that happens to contain it.
            if !self.password.is_empty() && p == self.password.expose() {
                *p = "***".into();
            }
        }
        fault
    }

    fn protocol_error(&self, method: &str, message: String) -> ClientError {
        ClientError::Protocol {
            host: self.host(),
            method: method.to_string(),
            message,
        }
    }
}

/// Reads that are safe to repeat after a dropped connection: `<Class>.get_…`.
fn is_idempotent(method: &str) -> bool {
    method
        .split_once('.')
        .is_some_and(|(class, name)| !class.starts_with("Async") && name.starts_with("get_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_getters_are_retried() {
        assert!(is_idempotent("VM.get_record"));
        assert!(is_idempotent("VDI.get_by_uuid"));
        assert!(!is_idempotent("VM.snapshot"));
        assert!(!is_idempotent("Async.VM.get_record"));
        assert!(!is_idempotent("task.create"));
    }
}
