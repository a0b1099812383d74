//! Opening HTTP/1.1 connections to a host, plain or TLS. XAPI closes data-plane connections
//! after each transfer, so a data-plane connection carries one request; RPC calls reuse theirs
//! (`rpc_pool`).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::HostUrl;
use super::tls::{Fingerprint, Trust, client_config};
use super::url::Scheme;

/// hyper's read buffer limit per connection.
const READ_BUFFER: usize = 1 << 20;
/// How long opening a connection may take: TCP connect, then the TLS handshake, each.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Failures below the XAPI level: the host could not be reached or spoke no HTTP.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{host}: connect: {source}")]
    Connect { host: String, source: io::Error },
    #[error("{host}: TLS: {message}")]
    Tls { host: String, message: String },
    #[error("{host}: HTTP: {message}")]
    Http { host: String, message: String },
    #[error("{host}: no response within {after:?} ({during})")]
    Timeout {
        host: String,
        after: Duration,
        during: &'static str,
    },
}

/// A host to open connections to, with its TLS trust settled once.
#[derive(Clone)]
pub struct Endpoint {
    url: HostUrl,
    tls: Option<TlsConnector>,
    observed: Arc<Mutex<Option<Fingerprint>>>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url.to_string())
            .finish()
    }
}

impl Endpoint {
    pub fn new(url: HostUrl, trust: &Trust) -> Result<Endpoint, TransportError> {
        let observed = Arc::new(Mutex::new(None));
        let tls = match url.scheme {
            Scheme::Http => None,
            Scheme::Https => Some(TlsConnector::from(
                client_config(trust, observed.clone()).map_err(|e| TransportError::Tls {
                    host: url.to_string(),
                    message: e.to_string(),
                })?,
            )),
        };
        Ok(Endpoint {
            url,
            tls,
            observed,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        })
    }

    /// The same endpoint, giving up on a TCP connect or a TLS handshake after `timeout`.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Endpoint {
        self.connect_timeout = timeout;
        self
    }

    pub fn url(&self) -> &HostUrl {
        &self.url
    }

    /// The same trust for another URL: where a 302 of the data plane points (another member
    /// of the pool). A pinned fingerprint stays pinned, so a redirect to a host with another
    /// certificate fails rather than being trusted silently; and a redirect from https to
    /// plain http is refused, since the request it repeats carries the session in its query.
    pub fn redirected(&self, url: HostUrl) -> Result<Endpoint, TransportError> {
        if url.scheme == Scheme::Http && self.tls.is_some() {
            return Err(TransportError::Tls {
                host: url.to_string(),
                message: format!(
                    "refusing a redirect from https at {} to plain http: it would send the session in clear text",
                    self.url
                ),
            });
        }
        if url.scheme == Scheme::Https && self.tls.is_none() {
            return Err(TransportError::Tls {
                host: url.to_string(),
                message: format!(
                    "redirected from plain HTTP at {}, with no TLS trust set",
                    self.url
                ),
            });
        }
        Ok(Endpoint {
            tls: match url.scheme {
                Scheme::Http => None,
                Scheme::Https => self.tls.clone(),
            },
            url,
            observed: self.observed.clone(),
            connect_timeout: self.connect_timeout,
        })
    }

    /// The fingerprint the host presented on the last TLS handshake.
    pub fn observed_fingerprint(&self) -> Option<Fingerprint> {
        self.observed.lock().ok().and_then(|f| *f)
    }

    /// Open a connection and send one request on it.
    pub async fn send<B>(&self, request: Request<B>) -> Result<Response<Incoming>, TransportError>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut sender = self.handshake().await?;
        sender
            .send_request(request)
            .await
            .map_err(|e| self.http_error(&e))
    }

    /// Open a connection and start HTTP/1.1 on it; its driver runs as a task of its own.
    pub async fn handshake<B>(&self) -> Result<SendRequest<B>, TransportError>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = self.connect().await?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            // Data-plane bodies are gigabytes: large reads mean fewer, larger frames and so
            // less per-frame work downstream (measured: 16 KiB frames cost a third of a
            // transfer's CPU in wake-ups and timers).
            .max_buf_size(READ_BUFFER)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.http_error(&e))?;
        tokio::spawn(async move {
            // Errors surface through the response future; nothing more to report here.
            let _ = connection.await;
        });
        Ok(sender)
    }

    pub fn http_error(&self, e: &dyn std::error::Error) -> TransportError {
        TransportError::Http {
            host: self.url.to_string(),
            message: error_chain(e),
        }
    }

    /// A TCP connection, wrapped in TLS for https.
    pub async fn connect(&self) -> Result<MaybeTls, TransportError> {
        let host = self.url.to_string();
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(
                self.url
                    .authority()
                    .trim_start_matches('[')
                    .replace("]:", ":"),
            ),
        )
        .await
        .map_err(|_| TransportError::Timeout {
            host: host.clone(),
            after: self.connect_timeout,
            during: "connect",
        })?
        .map_err(|source| TransportError::Connect {
            host: host.clone(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(MaybeTls::Plain(tcp));
        };
        let name =
            ServerName::try_from(self.url.host.clone()).map_err(|e| TransportError::Tls {
                host: host.clone(),
                message: e.to_string(),
            })?;
        // A host that accepts TCP but never answers the handshake must not hang us.
        let stream = tokio::time::timeout(self.connect_timeout, tls.connect(name, tcp))
            .await
            .map_err(|_| TransportError::Timeout {
                host: host.clone(),
                after: self.connect_timeout,
                during: "TLS handshake",
            })?
            .map_err(|e| TransportError::Tls {
                host,
                message: error_chain(&e),
            })?;
        Ok(MaybeTls::Tls(Box::new(stream)))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// A plain or TLS stream.
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    // Vectored writes let hyper send a body's `Bytes` frames as they are (writev), instead
    // of copying each one into its own write buffer first.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xapi::tls::Fingerprint;

    fn endpoint(url: &str, trust: &Trust) -> Endpoint {
        Endpoint::new(HostUrl::parse(url).unwrap(), trust).unwrap()
    }

    #[tokio::test]
    async fn a_silent_tls_host_times_out_in_the_handshake() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts, then says nothing: the handshake never completes.
        let silent = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(socket);
        });
        let endpoint = endpoint(&format!("https://127.0.0.1:{port}"), &Trust::Insecure)
            .with_connect_timeout(Duration::from_millis(200));
        let outcome = tokio::time::timeout(Duration::from_secs(10), endpoint.connect())
            .await
            .expect("the handshake gives up on its own");
        match outcome {
            Err(TransportError::Timeout { during, .. }) => assert_eq!(during, "TLS handshake"),
            Err(other) => panic!("expected a handshake timeout, got {other}"),
            Ok(_) => panic!("expected a handshake timeout, got a connection"),
        }
        silent.abort();
    }

    #[test]
    fn redirects_never_go_from_https_to_http() {
        let pinned = Trust::Pinned(Fingerprint::of_der(b"cert"));
        let https = endpoint("https://pool-master", &pinned);
        let error = https
            .redirected(HostUrl::parse("http://member").unwrap())
            .unwrap_err();
        assert!(error.to_string().contains("plain http"), "{error}");
        // Another https member keeps the pin.
        assert!(
            https
                .redirected(HostUrl::parse("https://member").unwrap())
                .unwrap()
                .tls
                .is_some()
        );
        // Plain http to plain http stays allowed (the user chose http).
        let http = endpoint("http://pool-master", &Trust::SystemRoots);
        assert!(
            http.redirected(HostUrl::parse("http://member").unwrap())
                .is_ok()
        );
    }
}
