//! The listener: accepts connections, wraps them in TLS when asked, serves each with hyper's
//! HTTP/1.1 connection, and shuts down gracefully.
//!
//! What one client can hold is bounded ([`Limits`]): at most `max_connections` connections are
//! served at once, and the next ones wait in the kernel's listen backlog, in arrival order,
//! until one ends. Every connection frees its place within a bounded time unless it is doing
//! real work: a request's headers (and a TLS handshake) must arrive within `header_timeout`,
//! which also ends idle keep-alive connections, and an RPC body within `body_timeout`. So
//! clients that hold connections without finishing requests delay a newcomer by at most about
//! one timeout, instead of locking it out. (Authenticated work holds its place as long as it
//! runs: a transfer, an `event.from` wait, of which a session may have 16.)
//!
//! Memory per connection is bounded too: hyper's read buffer, which a request head must fit
//! in, is 64 KiB; a session proves itself before a data-plane body is read; an RPC body, which
//! carries its session inside, is capped at `MAX_RPC_BODY` and, beyond 64 KiB, draws on a
//! budget all connections share (see `rpc`). So whatever unauthenticated clients send, the
//! host holds at most about `max_connections` x 128 KiB + 32 MiB for them (64 MiB by default).
//!
//! The server also runs the lab's NBD server ([`crate::lab::nbd`]) on the same address, on a
//! port of its own ([`LabServer::nbd_addr`]), and stops it with itself.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::rpc::BodyReading;
use super::{HttpError, route, tls};
use crate::lab::Lab;
use crate::lab::nbd::{LazyIdentity, NbdOptions, NbdServer};
use crate::xapi::tls::Fingerprint;

/// What the server allows its clients; see the module's documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait to be accepted until one ends.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, or to finish a TLS handshake;
    /// also how long a keep-alive connection may stay idle.
    pub header_timeout: Duration,
    /// How long a client may take to send a whole RPC request body.
    pub body_timeout: Duration,
}

/// hyper's read buffer, which a request's head must fit in: xapi's clients send heads of a
/// few hundred bytes, and a connection held with a partial head costs at most this (hyper's
/// default is about 400 KiB).
const READ_BUFFER: usize = 64 << 10;

impl Default for Limits {
    /// 256 connections (well under the usual 1024 open files; xapi's clients hold a few
    /// each), 30 s for headers and for an RPC body (a real one takes milliseconds).
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// A running lab host HTTP server, on the tokio runtime that started it.
pub struct LabServer {
    local_addr: SocketAddr,
    fingerprint: Option<Fingerprint>,
    /// Tells the accept loop to stop, with the grace period for requests in flight.
    stop: Option<oneshot::Sender<Duration>>,
    accept_loop: Option<JoinHandle<()>>,
    nbd: Option<NbdServer>,
}

impl LabServer {
    /// Listen on `addr` (port 0 picks a free port) and serve `lab`: over TLS with the
    /// certificate kept in the lab's directory (generated on first use) if `tls` is set.
    pub async fn start(lab: Lab, addr: SocketAddr, tls: bool) -> Result<LabServer, HttpError> {
        LabServer::start_with_limits(lab, addr, tls, Limits::default()).await
    }

    /// [`LabServer::start`] with other [`Limits`] than the defaults.
    pub async fn start_with_limits(
        lab: Lab,
        addr: SocketAddr,
        tls: bool,
        limits: Limits,
    ) -> Result<LabServer, HttpError> {
        LabServer::start_with(lab, addr, tls, limits, NbdOptions::default()).await
    }

    /// [`LabServer::start_with_limits`], with the NBD server's port and limits.
    pub async fn start_with(
        lab: Lab,
        addr: SocketAddr,
        tls: bool,
        limits: Limits,
        nbd: NbdOptions,
    ) -> Result<LabServer, HttpError> {
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
        let identity = identity.map(Arc::new);
        let acceptor = identity
            .as_ref()
            .map(|i| TlsAcceptor::from(i.config.clone()));
        // NBD presents the same certificate; without HTTPS it is made when first needed.
        let nbd_identity = Arc::new(LazyIdentity::new(lab.dir().to_path_buf(), identity));
        let nbd_addr = SocketAddr::new(addr.ip(), nbd.port);
        let nbd = NbdServer::start(lab.clone(), nbd_addr, nbd_identity, nbd).await?;
        let (stop, stopped) = oneshot::channel();
        let accept_loop = tokio::spawn(accept_loop(listener, acceptor, lab, limits, stopped));
        tracing::info!(%local_addr, tls, "lab host listening");
        Ok(LabServer {
            local_addr,
            fingerprint,
            stop: Some(stop),
            accept_loop: Some(accept_loop),
            nbd: Some(nbd),
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

    /// Where the lab's NBD server listens (`VDI.get_nbd_info` names it once a network has
    /// the purpose `nbd` or `insecure_nbd`).
    pub fn nbd_addr(&self) -> SocketAddr {
        self.nbd
            .as_ref()
            .map_or(self.local_addr, NbdServer::local_addr)
    }

    /// Stop accepting connections, give requests in flight up to `grace` to finish, then
    /// abort the connections still open: their transfers fail (an import leaves its VDI
    /// unchanged) and their tasks say so.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
        let nbd = async {
            if let Some(nbd) = self.nbd.take() {
                nbd.shutdown(grace).await;
            }
        };
        let http = async {
            if let Some(accept_loop) = self.accept_loop.take() {
                let _ = accept_loop.await;
            }
        };
        tokio::join!(nbd, http);
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
    limits: Limits,
    mut stop: oneshot::Receiver<Duration>,
) {
    let graceful = GracefulShutdown::new();
    // Owned here so that whatever outlives the grace period is aborted when the set drops.
    let mut connections = JoinSet::new();
    let places = Arc::new(Semaphore::new(limits.max_connections));
    let reading = Arc::new(BodyReading::new(limits.body_timeout));
    let grace = loop {
        tokio::select! {
            (accepted, place) = admit(&listener, &places) => match accepted {
                Ok((tcp, peer)) => {
                    while connections.try_join_next().is_some() {}
                    let (acceptor, lab) = (acceptor.clone(), lab.clone());
                    let (watcher, reading) = (graceful.watcher(), Arc::clone(&reading));
                    connections.spawn(async move {
                        connection(tcp, peer, acceptor, lab, limits, reading, watcher).await;
                        drop(place);
                    });
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

/// The next connection, once a place is free among the connections served: until then new
/// ones wait in the listen backlog.
async fn admit(
    listener: &TcpListener,
    places: &Arc<Semaphore>,
) -> (
    io::Result<(TcpStream, SocketAddr)>,
    Option<OwnedSemaphorePermit>,
) {
    // The semaphore is never closed, so this always gets a place.
    let place = Arc::clone(places).acquire_owned().await.ok();
    (listener.accept().await, place)
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    lab: Lab,
    limits: Limits,
    reading: Arc<BodyReading>,
    watcher: Watcher,
) {
    // Streams are written in large frames; small RPC answers should not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    match acceptor {
        None => serve(TokioIo::new(tcp), lab, limits, reading, watcher).await,
        Some(acceptor) => {
            match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => serve(TokioIo::new(stream), lab, limits, reading, watcher).await,
                Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake: {e}"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn serve<I>(
    io: TokioIo<I>,
    lab: Lab,
    limits: Limits,
    reading: Arc<BodyReading>,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let (lab, reading) = (lab.clone(), Arc::clone(&reading));
        async move { Ok::<_, Infallible>(route::handle(lab, &reading, request).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .max_buf_size(READ_BUFFER)
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, service);
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!("connection: {e}");
    }
}
