//! The lab host's NBD server, as xapi-nbd serves a XenServer host's VDIs: read-only exports of
//! a VDI's current content, named `/<vdi uuid>?session_id=<session ref>` as
//! `VDI.get_nbd_info` hands them out. It runs beside the HTTP server, inside
//! [`crate::lab::http::LabServer`], on a port of its own.
//!
//! - Whether and how it serves follows the networks' purposes, looked up on every connection:
//!   with a network of purpose `nbd`, TLS is required (`NBD_OPT_STARTTLS` first) and the lab's
//!   certificate is presented (the one `lab serve --tls` uses, made on first use); with
//!   `insecure_nbd`, plain connections only; with neither, connections are closed at once.
//! - The session in the export name must be valid when the client asks for the export, and
//!   the VDI must have its data (not `cbt_metadata`); otherwise the connection closes during
//!   `NBD_OPT_GO`, as xapi-nbd's does.
//! - The data is the VDI's chain as it was when the export was opened, read through the same
//!   chain reader the exports use.
//!
//! Bounds ([`NbdOptions`]): at most `max_connections` connections are served at once (more
//! wait in the listen backlog), each must finish its handshake within `handshake_timeout`, and
//! each holds at most about 1 MiB (see `connection`), so the server holds at most about
//! `max_connections` MiB whatever its clients send.
//!
//! Not modelled: xapi-nbd's dom0 attachment of the VDI (reads come from the files), its
//! per-session RBAC, and TLS on networks of purpose `nbd` being required only there: the
//! lab's server listens on one address for every network.

mod connection;
mod export_name;
pub(crate) mod exports;
mod negotiation;
mod requests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::lab::Lab;
use crate::lab::http::HttpError;
use crate::lab::http::tls::{self, Identity};
use crate::nbd::NbdError;

pub(crate) use export_name::format as export_name;

/// How the NBD server listens and what it allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NbdOptions {
    /// The port, on the HTTP server's address; 0 picks a free one.
    pub port: u16,
    /// Connections served at once; more wait to be accepted until one ends.
    pub max_connections: usize,
    /// How long a client may take from connecting to the start of transmission.
    pub handshake_timeout: Duration,
}

impl Default for NbdOptions {
    /// A free port, 64 connections (8 per disk for 8 disks at once), 30 s for a handshake.
    fn default() -> NbdOptions {
        NbdOptions {
            port: 0,
            max_connections: 64,
            handshake_timeout: Duration::from_secs(30),
        }
    }
}

/// Why one connection ended early (logged, never shown to another client).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    #[error("{0}")]
    Protocol(#[from] NbdError),
    #[error("{action}: {source}")]
    Io {
        action: &'static str,
        source: std::io::Error,
    },
    #[error("TLS handshake: {0}")]
    Tls(String),
    #[error("the lab host's TLS identity: {0}")]
    Identity(String),
    #[error("the handshake took longer than {0:?}")]
    HandshakeTimeout(Duration),
    #[error("closed: {0}")]
    Refused(&'static str),
    #[error("{0}")]
    Fault(crate::lab::faults::Cut),
}

impl ServeError {
    fn io(action: &'static str) -> impl FnOnce(std::io::Error) -> ServeError {
        move |source| ServeError::Io { action, source }
    }
}

/// The lab's TLS identity, loaded (or made) the first time NBD needs it.
pub(crate) struct LazyIdentity {
    lab_dir: PathBuf,
    loaded: Mutex<Option<Arc<Identity>>>,
}

impl LazyIdentity {
    pub(crate) fn new(lab_dir: PathBuf, loaded: Option<Arc<Identity>>) -> LazyIdentity {
        LazyIdentity {
            lab_dir,
            loaded: Mutex::new(loaded),
        }
    }

    /// The identity; blocks on file I/O the first time.
    pub(crate) fn get(&self) -> Result<Arc<Identity>, HttpError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(identity) = loaded.as_ref() {
            return Ok(Arc::clone(identity));
        }
        let identity = Arc::new(tls::load_or_create(&self.lab_dir)?);
        *loaded = Some(Arc::clone(&identity));
        Ok(identity)
    }
}

/// Where the NBD server of a lab listens, and its identity: what `VDI.get_nbd_info` tells.
#[derive(Clone)]
pub(crate) struct NbdEndpoint {
    pub addr: SocketAddr,
    pub identity: Arc<LazyIdentity>,
}

impl std::fmt::Debug for NbdEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdEndpoint")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A running NBD server, on the tokio runtime that started it.
pub(crate) struct NbdServer {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<Duration>>,
    accept_loop: Option<JoinHandle<()>>,
}

impl NbdServer {
    /// Listen on `addr` and serve `lab`'s VDIs; the lab's `VDI.get_nbd_info` names this server
    /// until it stops.
    pub(crate) async fn start(
        lab: Lab,
        addr: SocketAddr,
        identity: Arc<LazyIdentity>,
        options: NbdOptions,
    ) -> Result<NbdServer, HttpError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError::Listen { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| HttpError::Listen { addr, source })?;
        *lab.nbd_slot()
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(NbdEndpoint {
            addr: local_addr,
            identity: Arc::clone(&identity),
        });
        let (stop, stopped) = oneshot::channel();
        let accept_loop = tokio::spawn(accept_loop(listener, lab, identity, options, stopped));
        tracing::info!(%local_addr, "lab NBD server listening");
        Ok(NbdServer {
            local_addr,
            stop: Some(stop),
            accept_loop: Some(accept_loop),
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting, let reads in flight finish for up to `grace`, then cut what is left.
    pub(crate) async fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
        if let Some(accept_loop) = self.accept_loop.take() {
            let _ = accept_loop.await;
        }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Duration::ZERO);
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    lab: Lab,
    identity: Arc<LazyIdentity>,
    options: NbdOptions,
    mut stop: oneshot::Receiver<Duration>,
) {
    let local_addr = listener.local_addr().ok();
    let places = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let (stopping, stopping_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let grace = loop {
        // Waits in the listen backlog while every place is taken.
        let place = tokio::select! {
            place = Arc::clone(&places).acquire_owned() => place,
            grace = &mut stop => break grace.unwrap_or(Duration::ZERO),
        };
        let Ok(place) = place else {
            break Duration::ZERO;
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    while connections.try_join_next().is_some() {}
                    let (lab, identity) = (lab.clone(), Arc::clone(&identity));
                    let stop = stopping_rx.clone();
                    connections.spawn(async move {
                        let served = connection::serve(
                            tcp, lab, identity, options.handshake_timeout, stop,
                        )
                        .await;
                        if let Err(e) = served {
                            tracing::debug!(%peer, "NBD connection: {e}");
                        }
                        drop(place);
                    });
                }
                Err(e) => {
                    // Out of file descriptors, typically: wait for some to be freed.
                    tracing::warn!("accepting an NBD connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            grace = &mut stop => break grace.unwrap_or(Duration::ZERO),
        }
    };
    drop(listener);
    {
        let mut slot = lab
            .nbd_slot()
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().map(|e| e.addr) == local_addr {
            *slot = None;
        }
    }
    // Idle connections leave at once; a read in hand is finished first.
    let _ = stopping.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::info!(
            "NBD server stopping with {} connections still busy",
            connections.len()
        );
    }
}
