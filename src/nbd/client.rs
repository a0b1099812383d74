//! A thin async NBD client: the codec driven over a connection the caller opened, with an
//! optional TLS upgrade (`NBD_OPT_STARTTLS`), pipelined reads and a clean disconnect.
//!
//! Timeouts are the caller's: wrap [`NbdClient::connect`] and each read in
//! `tokio::time::timeout`. A read cancelled that way leaves the connection unusable (later
//! reads say so); drop it. A server that closes the connection at any point gives an
//! [`NbdError::Closed`] saying where, never a hang or a short read.
//!
//! Memory: reads land in the caller's buffers (the data of a reply is read straight into
//! place when nothing else is buffered); the client itself holds one read buffer of at most
//! [`READ_CHUNK`] bytes plus a partial reply header, whatever the server sends.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::error::{NbdError, Phase};
use super::handshake::{ClientHandshake, ExportInfo, Goal, HandshakeEvent};
use super::transmission::{Reply, Transmission};
use super::wire::Decoded;
use crate::xapi::tls::{Fingerprint, Trust, client_config};

/// Reads kept in flight on one connection by default: qemu-nbd serves 16 at a time per
/// client, and with 28-byte requests the whole window fits any socket buffer, so writing
/// requests never waits on the server reading them.
pub const DEFAULT_IN_FLIGHT: usize = 16;

/// The most the client buffers from the connection at once.
pub const READ_CHUNK: usize = 64 << 10;

/// How to run TLS over an NBD connection: the host trust and the name to present (SNI, and
/// checked against the certificate with [`Trust::SystemRoots`]).
#[derive(Clone)]
pub struct NbdTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    observed: Arc<Mutex<Option<Fingerprint>>>,
}

impl std::fmt::Debug for NbdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl NbdTls {
    pub fn new(trust: &Trust, server_name: &str) -> Result<NbdTls, NbdError> {
        let observed = Arc::new(Mutex::new(None));
        let config =
            client_config(trust, observed.clone()).map_err(|e| NbdError::Tls(e.to_string()))?;
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| NbdError::Tls(format!("server name {server_name:?}: {e}")))?;
        Ok(NbdTls {
            connector: TlsConnector::from(config),
            server_name,
            observed,
        })
    }

    /// Trust exactly the certificate in `cert_pem` (the first one, if several): what
    /// `VDI.get_nbd_info` returns as `cert`, with its `subject` as `server_name`.
    pub fn pinned_pem(cert_pem: &str, server_name: &str) -> Result<NbdTls, NbdError> {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| NbdError::Tls(format!("the server's certificate: {e}")))?;
        NbdTls::new(&Trust::Pinned(Fingerprint::of_der(&cert)), server_name)
    }

    /// The fingerprint the server presented on the last TLS handshake.
    pub fn observed_fingerprint(&self) -> Option<Fingerprint> {
        self.observed.lock().ok().and_then(|f| *f)
    }
}

/// The connection, before and after STARTTLS.
enum Link<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    /// Between giving the plain stream to the TLS handshake and getting it back; only seen
    /// if that handshake failed.
    Upgrading,
}

fn upgrading() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the TLS upgrade failed")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Link<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Link::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Link::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Link<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Link::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Link::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Link::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Plain(s) => Pin::new(s).poll_flush(cx),
            Link::Tls(s) => Pin::new(s).poll_flush(cx),
            Link::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Link::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Link::Upgrading => Poll::Ready(Ok(())),
        }
    }
}

/// A connection in transmission phase with one export.
pub struct NbdClient<S> {
    link: Link<S>,
    codec: Transmission,
    buffer: BytesMut,
    /// Why the connection can no longer be used (an I/O or protocol error mid-reply).
    broken: Option<String>,
}

impl<S> std::fmt::Debug for NbdClient<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdClient")
            .field("export", self.codec.export())
            .field("tls", &matches!(self.link, Link::Tls(_)))
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl NbdClient<TcpStream> {
    /// Connect to `address` (a host name or an IP address, as `VDI.get_nbd_info` gives it)
    /// and `port` over TCP, without Nagle's delays as the protocol recommends, then
    /// [`NbdClient::connect`].
    pub async fn connect_tcp(
        address: &str,
        port: u16,
        export_name: &str,
        tls: Option<&NbdTls>,
    ) -> Result<(NbdClient<TcpStream>, ExportInfo), NbdError> {
        let io = |source| NbdError::Io {
            phase: Phase::Greeting,
            source,
        };
        let stream = TcpStream::connect((address, port)).await.map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        NbdClient::connect(stream, export_name, tls).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> NbdClient<S> {
    /// Negotiate `export_name` on `stream` (over TLS when `tls` is given; a server refusing
    /// TLS then fails the handshake) and enter transmission phase.
    pub async fn connect(
        stream: S,
        export_name: &str,
        tls: Option<&NbdTls>,
    ) -> Result<(NbdClient<S>, ExportInfo), NbdError> {
        let mut link = Link::Plain(stream);
        let mut buffer = BytesMut::new();
        let mut handshake = ClientHandshake::new(export_name, tls.is_some(), Goal::Transmission)?;
        let info = match drive(&mut link, &mut handshake, tls, &mut buffer).await? {
            HandshakeEvent::Ready(info) => info,
            other => {
                return Err(NbdError::Request(format!(
                    "handshake ended with {other:?} instead of transmission"
                )));
            }
        };
        let client = NbdClient {
            link,
            codec: Transmission::new(info, DEFAULT_IN_FLIGHT),
            buffer,
            broken: None,
        };
        Ok((client, info))
    }

    /// Ask about `export_name` without using it (`NBD_OPT_INFO`, then `NBD_OPT_ABORT`), and
    /// close the connection. Servers without `NBD_OPT_INFO` (xapi-nbd) refuse it.
    pub async fn probe(
        stream: S,
        export_name: &str,
        tls: Option<&NbdTls>,
    ) -> Result<ExportInfo, NbdError> {
        let mut link = Link::Plain(stream);
        let mut buffer = BytesMut::new();
        let mut handshake = ClientHandshake::new(export_name, tls.is_some(), Goal::Probe)?;
        let event = drive(&mut link, &mut handshake, tls, &mut buffer).await?;
        // The session is over either way; a failed close changes nothing.
        let _ = link.shutdown().await;
        match event {
            HandshakeEvent::Probed(info) => Ok(info),
            other => Err(NbdError::Request(format!(
                "probe ended with {other:?} instead of the export's description"
            ))),
        }
    }

    pub fn export(&self) -> &ExportInfo {
        self.codec.export()
    }

    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.link, Link::Tls(_))
    }

    /// Keep at most `reads` (1 to 64) reads in flight from now on.
    pub fn set_max_in_flight(&mut self, reads: usize) {
        self.codec.set_max_in_flight(reads);
    }

    /// Fill `buf` with the export's bytes from `offset`, in requests of at most
    /// [`ExportInfo::max_request`] bytes, pipelined.
    pub async fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        self.read_many(&mut [(offset, buf)]).await
    }

    /// Fill each buffer with the export's bytes from its offset: all the requests pipelined
    /// on the connection, several in flight, answered in any order. Every range is checked
    /// (within the export, aligned to its minimum block size) before anything is sent. If the
    /// server fails some reads, the others still complete and the first failure is returned;
    /// the connection stays usable (on `NBD_ESHUTDOWN` the caller should disconnect).
    pub async fn read_many(&mut self, reads: &mut [(u64, &mut [u8])]) -> Result<(), NbdError> {
        if let Some(why) = &self.broken {
            return Err(NbdError::Request(format!(
                "the connection is unusable after an earlier failure: {why}"
            )));
        }
        let max = self.codec.export().max_request() as usize;
        let mut pieces: Vec<(u64, &mut [u8])> = Vec::new();
        for (offset, buf) in reads.iter_mut() {
            for (i, chunk) in buf.chunks_mut(max).enumerate() {
                let at = offset.checked_add((i * max) as u64).ok_or_else(|| {
                    NbdError::Request(format!("read at offset {offset} overflows"))
                })?;
                self.codec.check_read(at, chunk.len() as u32)?;
                pieces.push((at, chunk));
            }
        }
        // Cleared below when the replies are all in: a read dropped half-way (by a timeout)
        // leaves replies on the way that no later read could tell from its own.
        self.broken = Some("an earlier read was cancelled before all its replies arrived".into());
        match self.pipeline(&mut pieces).await {
            Ok(failure) => {
                self.broken = None;
                failure.map_or(Ok(()), Err)
            }
            Err(e) => {
                self.broken = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Send `NBD_CMD_DISC` and close the connection (with TLS's close notification).
    pub async fn disconnect(mut self) -> Result<(), NbdError> {
        if self.broken.is_none() {
            let request = self.codec.encode_disconnect();
            self.link
                .write_all(&request)
                .await
                .map_err(transmission_io)?;
            self.link.flush().await.map_err(transmission_io)?;
        }
        // The server closes its side on NBD_CMD_DISC, perhaps first: nothing to report.
        let _ = self.link.shutdown().await;
        Ok(())
    }

    /// Run every piece to completion. `Ok` carries the first read the server failed, if any;
    /// `Err` is a failure that leaves the connection out of step.
    async fn pipeline(
        &mut self,
        pieces: &mut [(u64, &mut [u8])],
    ) -> Result<Option<NbdError>, NbdError> {
        let mut piece_of: HashMap<u64, usize> = HashMap::new();
        let (mut sent, mut done) = (0, 0);
        let mut failure = None;
        let mut requests = Vec::new();
        while done < pieces.len() {
            requests.clear();
            while sent < pieces.len() && self.codec.can_send() {
                let (offset, buf) = &pieces[sent];
                let (handle, request) = self.codec.encode_read(*offset, buf.len() as u32)?;
                piece_of.insert(handle, sent);
                requests.extend_from_slice(&request);
                sent += 1;
            }
            if !requests.is_empty() {
                self.link
                    .write_all(&requests)
                    .await
                    .map_err(transmission_io)?;
                self.link.flush().await.map_err(transmission_io)?;
            }
            let Some(reply) = self.next_reply(pieces, &piece_of).await? else {
                continue;
            };
            match reply {
                Reply::Data { complete, .. } => done += usize::from(complete),
                Reply::Failed {
                    handle,
                    offset,
                    len,
                    error,
                } => {
                    done += 1;
                    failure.get_or_insert(NbdError::ReadFailed {
                        handle,
                        offset,
                        len,
                        error,
                    });
                }
            }
        }
        Ok(failure)
    }

    /// Receive the next reply or piece of data into its place; `None` when more bytes had
    /// to be read first.
    async fn next_reply(
        &mut self,
        pieces: &mut [(u64, &mut [u8])],
        piece_of: &HashMap<u64, usize>,
    ) -> Result<Option<Reply>, NbdError> {
        let target = |handle: u64| {
            piece_of.get(&handle).copied().ok_or_else(|| {
                NbdError::Request(format!("reply for handle {handle}, not sent by this read"))
            })
        };
        // Data due and none buffered: read it straight into its place.
        if let Some(due) = self.codec.data_due()
            && self.buffer.is_empty()
        {
            let buf = &mut pieces[target(due.handle)?].1;
            let place = &mut buf[due.at as usize..(due.at + due.remaining) as usize];
            let n = self
                .link
                .read(place)
                .await
                .map_err(|e| self.read_error(e))?;
            if n == 0 {
                return Err(self.codec.server_closed(0));
            }
            return match self.codec.decode(&place[..n])? {
                Decoded::Done { value, .. } => Ok(Some(value)),
                Decoded::NeedMore(_) => Ok(None),
            };
        }
        match self.codec.decode(&self.buffer)? {
            Decoded::NeedMore(_) => {
                if self.buffer.capacity() - self.buffer.len() < READ_CHUNK / 2 {
                    self.buffer.reserve(READ_CHUNK);
                }
                let n = self
                    .link
                    .read_buf(&mut self.buffer)
                    .await
                    .map_err(|e| self.read_error(e))?;
                if n == 0 {
                    return Err(self.codec.server_closed(self.buffer.len()));
                }
                Ok(None)
            }
            Decoded::Done { value, consumed } => {
                if let Reply::Data {
                    handle, at, data, ..
                } = &value
                {
                    let buf = &mut pieces[target(*handle)?].1;
                    let at = *at as usize;
                    buf[at..at + data.len()].copy_from_slice(&self.buffer[data.clone()]);
                }
                self.buffer.advance(consumed);
                Ok(Some(value))
            }
        }
    }

    /// TLS reports a peer that closed without its close notification as `UnexpectedEof`:
    /// the same as a plain close for the protocol.
    fn read_error(&self, e: io::Error) -> NbdError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            self.codec.server_closed(self.buffer.len())
        } else {
            transmission_io(e)
        }
    }
}

fn transmission_io(source: io::Error) -> NbdError {
    NbdError::Io {
        phase: Phase::Transmission,
        source,
    }
}

/// Run the handshake to its end: flush what it has to send, read what it needs, upgrade to
/// TLS when the server agrees. After a refused option, leave with `NBD_OPT_ABORT`.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<S>,
    handshake: &mut ClientHandshake,
    tls: Option<&NbdTls>,
    buffer: &mut BytesMut,
) -> Result<HandshakeEvent, NbdError> {
    let result = negotiate(link, handshake, tls, buffer).await;
    if result.is_err()
        && let Some(abort) = handshake.abort_after_refusal()
    {
        // The refusal is the error to report; failing to leave politely changes nothing.
        let _ = link.write_all(&abort).await;
        let _ = link.flush().await;
        let _ = link.shutdown().await;
    }
    result
}

async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<S>,
    handshake: &mut ClientHandshake,
    tls: Option<&NbdTls>,
    buffer: &mut BytesMut,
) -> Result<HandshakeEvent, NbdError> {
    loop {
        let output = handshake.take_output();
        if !output.is_empty() {
            let io = |source| NbdError::Io {
                phase: handshake.phase(),
                source,
            };
            link.write_all(&output).await.map_err(io)?;
            link.flush().await.map_err(io)?;
        }
        match handshake.decode(buffer)? {
            Decoded::NeedMore(n) => {
                // Bounded by the codec: at most one option reply header and payload.
                buffer.reserve(n);
                let read = link.read_buf(buffer).await;
                match read {
                    Ok(0) => return handshake.server_closed(buffer.len()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return handshake.server_closed(buffer.len());
                    }
                    Err(source) => {
                        return Err(NbdError::Io {
                            phase: handshake.phase(),
                            source,
                        });
                    }
                }
            }
            Decoded::Done { value, consumed } => {
                buffer.advance(consumed);
                match value {
                    HandshakeEvent::Continue => {}
                    HandshakeEvent::StartTls => {
                        let tls = tls.ok_or_else(|| {
                            NbdError::Request("STARTTLS accepted but no TLS configured".into())
                        })?;
                        let Link::Plain(plain) = std::mem::replace(link, Link::Upgrading) else {
                            return Err(NbdError::Tls("TLS started twice".into()));
                        };
                        let stream = tls
                            .connector
                            .connect(tls.server_name.clone(), plain)
                            .await
                            .map_err(|e| NbdError::Tls(format!("handshake: {e}")))?;
                        *link = Link::Tls(Box::new(stream));
                        handshake.tls_started()?;
                    }
                    HandshakeEvent::Ready(_) | HandshakeEvent::Probed(_) => return Ok(value),
                }
            }
        }
    }
}
