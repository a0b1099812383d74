//! One NBD connection: the negotiation and then the requests, driven over the socket (and TLS
//! after `NBD_OPT_STARTTLS`). The decisions are the codecs' (`negotiation`, `requests`); this
//! moves bytes, looks exports up and reads their data on blocking threads.
//!
//! Memory per connection: the bytes of one option or request being decoded (at most
//! `nbd::server::MAX_OPTION_DATA` plus a read of [`READ_AHEAD`]) and one [`DATA_CHUNK`] of a
//! read's data, whatever the client asks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::exports::{self, Served};
use super::negotiation::{Negotiation, Step, greeting};
use super::requests::{self, Action};
use super::{LazyIdentity, ServeError};
use crate::lab::Lab;
use crate::lab::faults::{Plane, TransferFaults};
use crate::nbd::server::encode_simple_reply;
use crate::nbd::wire::Decoded;

/// What one read from the socket may bring in at most.
const READ_AHEAD: usize = 4 << 10;
/// A read's data goes out in pieces of at most this.
const DATA_CHUNK: usize = 1 << 20;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Link = Box<dyn Io>;

/// Serve one connection until the client leaves, breaks the protocol, or the server stops.
pub(super) async fn serve(
    tcp: TcpStream,
    lab: Lab,
    identity: Arc<LazyIdentity>,
    handshake_timeout: Duration,
    stop: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    // Replies are written whole; a small one should not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    let probe = lab.clone();
    // No network offers NBD: xapi-nbd would not even listen.
    let Some(security) = blocking(move || probe.with_db(exports::security)).await? else {
        return Ok(());
    };
    let mut buffer = BytesMut::new();
    let negotiated = tokio::time::timeout(
        handshake_timeout,
        negotiate(
            Box::new(tcp),
            &mut buffer,
            Negotiation::new(security),
            &lab,
            &identity,
        ),
    )
    .await
    .map_err(|_| ServeError::HandshakeTimeout(handshake_timeout))??;
    match negotiated {
        (link, Some(served)) => transmit(link, buffer, &served, stop, &lab).await,
        (mut link, None) => {
            let _ = link.shutdown().await;
            Ok(())
        }
    }
}

/// Run the handshake; the export to serve, or `None` when the client left or was refused.
async fn negotiate(
    mut link: Link,
    buffer: &mut BytesMut,
    mut negotiation: Negotiation,
    lab: &Lab,
    identity: &Arc<LazyIdentity>,
) -> Result<(Link, Option<Served>), ServeError> {
    write(&mut link, &greeting()).await?;
    loop {
        let (step, consumed) = match negotiation.decode(buffer)? {
            Decoded::NeedMore(_) => {
                if !fill(&mut link, buffer).await? {
                    return Ok((link, None));
                }
                continue;
            }
            Decoded::Done { value, consumed } => (value, consumed),
        };
        buffer.advance(consumed);
        match step {
            Step::Reply(bytes) => write(&mut link, &bytes).await?,
            Step::StartTls(ack) => {
                if !buffer.is_empty() {
                    return Err(ServeError::Refused("bytes after NBD_OPT_STARTTLS"));
                }
                write(&mut link, &ack).await?;
                let identity = Arc::clone(identity);
                let config = blocking(move || identity.get().map(|i| i.nbd_config.clone()))
                    .await?
                    .map_err(|e| ServeError::Identity(e.to_string()))?;
                let stream = TlsAcceptor::from(config)
                    .accept(link)
                    .await
                    .map_err(|e| ServeError::Tls(e.to_string()))?;
                link = Box::new(stream);
                negotiation.tls_started();
            }
            Step::Lookup(lookup) => {
                let (lab, name) = (lab.clone(), lookup.name.clone());
                let served = match blocking(move || exports::open(&lab, &name)).await? {
                    Ok(served) => Some(served),
                    Err(why) => {
                        tracing::info!("NBD export refused: {why}");
                        None
                    }
                };
                match negotiation.looked_up(&lookup, served.as_ref().map(|s| s.size)) {
                    Step::Transmit(bytes) => {
                        write(&mut link, &bytes).await?;
                        return Ok((link, served));
                    }
                    Step::Reply(bytes) => write(&mut link, &bytes).await?,
                    _ => return Ok((link, None)),
                }
            }
            Step::Transmit(bytes) | Step::ReplyAndClose(bytes) => {
                write(&mut link, &bytes).await?;
                return Ok((link, None));
            }
            Step::Close(why) => return Err(ServeError::Refused(why)),
        }
    }
}

/// Answer requests until the client disconnects or the server stops (after the request in
/// hand).
async fn transmit(
    mut link: Link,
    mut buffer: BytesMut,
    served: &Served,
    mut stop: watch::Receiver<bool>,
    lab: &Lab,
) -> Result<(), ServeError> {
    let names = [served.names[0].as_str(), served.names[1].as_str()];
    let mut faults = Sent {
        faults: lab.faults().arm(Plane::Nbd, &names),
        bytes: 0,
        started: Instant::now(),
    };
    loop {
        if *stop.borrow() {
            break;
        }
        let (action, consumed) = match requests::next(&buffer, served.size)? {
            Decoded::NeedMore(_) => {
                let more = tokio::select! {
                    more = fill(&mut link, &mut buffer) => more?,
                    _ = stop.changed() => false,
                };
                if !more {
                    break;
                }
                continue;
            }
            Decoded::Done { value, consumed } => (value, consumed),
        };
        buffer.advance(consumed);
        match action {
            Action::Read {
                handle,
                offset,
                len,
            } => read(&mut link, served, handle, offset, len, &mut faults).await?,
            Action::Refuse(reply) => write(&mut link, &reply).await?,
            Action::Disconnect => break,
            Action::Close(why) => return Err(ServeError::Refused(why)),
        }
    }
    let _ = link.shutdown().await;
    Ok(())
}

/// The read data a connection has sent, against the faults it armed (`drop_nbd`, a
/// `stall` on `nbd`).
struct Sent {
    faults: TransferFaults,
    bytes: u64,
    started: Instant,
}

/// A successful reply header, then the data, a piece at a time; a `stall` waits before the
/// byte it names, and a `drop_nbd` fault closes the connection once its byte count is
/// reached.
async fn read(
    link: &mut Link,
    served: &Served,
    handle: u64,
    offset: u64,
    len: u32,
    sent: &mut Sent,
) -> Result<(), ServeError> {
    link.write_all(&encode_simple_reply(handle, None))
        .await
        .map_err(ServeError::io("write a reply"))?;
    let end = offset + u64::from(len);
    let mut at = offset;
    while at < end {
        let n = (end - at).min(DATA_CHUNK as u64) as usize;
        let chain = Arc::clone(&served.chain);
        let data = blocking(move || {
            let mut data = vec![0u8; n];
            chain.read_at(at, &mut data);
            data
        })
        .await?;
        let mut rest = &data[..];
        while !rest.is_empty() {
            let step = sent
                .faults
                .step(sent.bytes, rest.len(), sent.started.elapsed());
            if !step.wait.is_zero() {
                tokio::time::sleep(step.wait).await;
            }
            let (part, after) = rest.split_at(step.pass);
            if let Some(cut) = step.cut {
                let _ = link.write_all(part).await;
                let _ = link.shutdown().await;
                return Err(ServeError::Fault(cut));
            }
            link.write_all(part)
                .await
                .map_err(ServeError::io("write a read's data"))?;
            sent.bytes += part.len() as u64;
            rest = after;
        }
        at += n as u64;
    }
    link.flush().await.map_err(ServeError::io("flush"))
}

async fn write(link: &mut Link, bytes: &[u8]) -> Result<(), ServeError> {
    if bytes.is_empty() {
        return Ok(());
    }
    link.write_all(bytes)
        .await
        .map_err(ServeError::io("write"))?;
    link.flush().await.map_err(ServeError::io("flush"))
}

/// Read more of what the client sends; `false` when it closed the connection.
async fn fill(link: &mut Link, buffer: &mut BytesMut) -> Result<bool, ServeError> {
    buffer.reserve(READ_AHEAD);
    let mut limited = (&mut *link).take(READ_AHEAD as u64);
    match limited.read_buf(buffer).await {
        Ok(0) => Ok(false),
        Ok(_) => Ok(true),
        // A TLS client gone without its close notification has left all the same.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(ServeError::io("read")(e)),
    }
}

/// Run `work` on a blocking thread: lab lookups take its locks, and reads touch the disk.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ServeError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        ServeError::Refused(if e.is_panic() {
            "a lookup panicked"
        } else {
            "cancelled"
        })
    })
}
