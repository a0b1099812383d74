//! The listener: accepts connections, wraps them in TLS when asked, serves each with hyper's
//! HTTP/1.1 connection, and shuts down gracefully.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::{HttpError, route, tls};
use crate::lab::Lab;
use crate::xapi::tls::Fingerprint;

/// How long a client may take to send a request's headers, or to finish a TLS handshake.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// A running lab host HTTP server, on the tokio runtime that started it.
pub struct LabServer {
    local_addr: SocketAddr,
    fingerprint: Option<Fingerprint>,
    /// Tells the accept loop to stop, with the grace period for requests in flight.
    stop: Option<oneshot::Sender<Duration>>,
    accept_loop: Option<JoinHandle<()>>,
}

impl LabServer {
    /// Listen on `addr` (port 0 picks a free port) and serve `lab`: over TLS with the
    /// certificate kept in the lab's directory (generated on first use) if `tls` is set.
    pub async fn start(lab: Lab, addr: SocketAddr, tls: bool) -> Result<LabServer, HttpError> {
        let identity = if tls {
            let dir = lab.dir().to_path_buf();
            Some(
                tokio::task::spawn_blocking(move || tls::load_or_create(&dir))
                    .await
                    .map_err(|e| HttpError::Io {
                        action: "load the TLS identity from",
                        path: lab.dir().to_path_buf(),
                        source: std::io::Error::other(e),
                    })??,
            )
        } else {
            None
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError::Listen { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| HttpError::Listen { addr, source })?;
        let fingerprint = identity.as_ref().map(|i| i.fingerprint);
        let acceptor = identity.map(|i| TlsAcceptor::from(i.config));
        let (stop, stopped) = oneshot::channel();
        let accept_loop = tokio::spawn(accept_loop(listener, acceptor, lab, stopped));
        tracing::info!(%local_addr, tls, "lab host listening");
        Ok(LabServer {
            local_addr,
            fingerprint,
            stop: Some(stop),
            accept_loop: Some(accept_loop),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://127.0.0.1:PORT` or `https://…`, without credentials.
    pub fn base_url(&self) -> String {
        let scheme = if self.fingerprint.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.local_addr)
    }

    /// The TLS certificate's fingerprint, for clients to pin; `None` without TLS.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }

    /// Stop accepting connections, give requests in flight up to `grace` to finish, then
    /// abort the connections still open: their transfers fail (an import leaves its VDI
    /// unchanged) and their tasks say so.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
        if let Some(accept_loop) = self.accept_loop.take() {
            let _ = accept_loop.await;
        }
    }
}

impl Drop for LabServer {
    /// A server dropped without [`LabServer::shutdown`] stops at once.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Duration::ZERO);
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    lab: Lab,
    mut stop: oneshot::Receiver<Duration>,
) {
    let graceful = GracefulShutdown::new();
    // Owned here so that whatever outlives the grace period is aborted when the set drops.
    let mut connections = JoinSet::new();
    let grace = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    while connections.try_join_next().is_some() {}
                    let (acceptor, lab) = (acceptor.clone(), lab.clone());
                    connections.spawn(connection(tcp, peer, acceptor, lab, graceful.watcher()));
                }
                Err(e) => {
                    // Out of file descriptors, typically: wait for some to be freed.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            grace = &mut stop => break grace.unwrap_or(Duration::ZERO),
        }
    };
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("stopping with {} connections still busy", connections.len());
    }
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    lab: Lab,
    watcher: Watcher,
) {
    // Streams are written in large frames; small RPC answers should not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    match acceptor {
        None => serve(TokioIo::new(tcp), lab, watcher).await,
        Some(acceptor) => match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => serve(TokioIo::new(stream), lab, watcher).await,
            Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake: {e}"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        },
    }
}

async fn serve<I>(io: TokioIo<I>, lab: Lab, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let lab = lab.clone();
        async move { Ok::<_, Infallible>(route::handle(lab, request).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service);
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!("connection: {e}");
    }
}
