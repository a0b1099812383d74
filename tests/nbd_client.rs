//! The NBD client against a tiny in-test server built on the codec's server-side messages
//! (`vhdsync::nbd::server`): random reads of a random disk equal the disk (replies shuffled,
//! written in random pieces, over plain and TLS connections), the `NBD_OPT_EXPORT_NAME`
//! fallback, block size limits, and every way a server can fail or misbehave mid-read: each
//! gives a clear error, never a hang.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use proptest::prelude::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use vhdsync::nbd::server::{
    decode_client_flags, decode_info_request, decode_option, decode_request,
    encode_export_name_reply, encode_greeting, encode_info_block_size, encode_info_export,
    encode_option_reply, encode_simple_reply,
};
use vhdsync::nbd::wire::{
    CMD_DISC, CMD_READ, Decoded, FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_HAS_FLAGS,
    FLAG_NO_ZEROES, FLAG_READ_ONLY, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_STARTTLS,
    STRUCTURED_REPLY_MAGIC,
};
use vhdsync::nbd::{BlockSizes, NbdClient, NbdError, NbdTls, Phase, ReplyCode, ServerError};
use vhdsync::{Fingerprint, Trust};

const EXPORT: &str = "/disk?session_id=OpaqueRef:s3cr3t";

/// How the test server misbehaves, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Fail reads touching this byte with `NBD_EIO`.
    FailReadAt(u64),
    /// Send the header and half the data of the n-th read's reply, then close.
    CloseMidData(usize),
    /// Close after reading the n-th read request, answering nothing.
    CloseBeforeReply(usize),
    /// Answer the first read with another handle.
    WrongHandle,
    /// Answer the first read with a structured reply chunk.
    Structured,
    /// Close instead of answering `NBD_OPT_GO`, as xapi-nbd does for a bad session.
    CloseOnGo,
    /// Read requests but never answer them.
    Stall,
}

#[derive(Clone)]
struct Server {
    disk: Arc<Vec<u8>>,
    /// Answer `NBD_OPT_GO` (else `NBD_REP_ERR_UNSUP`, as older xapi-nbd).
    go: bool,
    no_zeroes: bool,
    block_sizes: Option<BlockSizes>,
    /// FORCEDTLS with this identity.
    tls: Option<Arc<rustls::ServerConfig>>,
    fault: Fault,
    /// Shuffles the replies to requests that arrive together, and cuts writes.
    seed: u64,
    log: Arc<Mutex<Log>>,
}

#[derive(Debug, Default)]
struct Log {
    options: Vec<u32>,
    reads: Vec<(u64, u32)>,
    disconnected: bool,
    client_flags: u32,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// xorshift64*, for the server's choices.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1) as u64) as usize
    }
}

impl Server {
    fn new(disk: Vec<u8>) -> Server {
        Server {
            disk: Arc::new(disk),
            go: true,
            no_zeroes: true,
            block_sizes: None,
            tls: None,
            fault: Fault::None,
            seed: 1,
            log: Arc::default(),
        }
    }

    /// A connected client stream, with this server running on the other end. The tests
    /// look at the client's side; the server's errors only end its task.
    fn start(&self) -> DuplexStream {
        self.start_task().0
    }

    /// The same, with the server's task to wait for.
    fn start_task(&self) -> (DuplexStream, JoinHandle<std::io::Result<()>>) {
        let (client, server) = tokio::io::duplex(64 << 10);
        let task = tokio::spawn(self.clone().serve(Box::new(server)));
        (client, task)
    }

    async fn serve(self, mut io: Box<dyn Io>) -> std::io::Result<()> {
        let mut rng = Rng(self.seed | 1);
        let mut buf = BytesMut::new();
        let flags = FLAG_FIXED_NEWSTYLE | if self.no_zeroes { FLAG_NO_ZEROES } else { 0 };
        io.write_all(&encode_greeting(flags)).await?;
        let client_flags = loop {
            match decode_client_flags(&buf) {
                Decoded::Done { value, consumed } => {
                    buf.advance(consumed);
                    break value;
                }
                Decoded::NeedMore(_) => fill(&mut io, &mut buf).await?,
            }
        };
        self.log.lock().unwrap().client_flags = client_flags;
        let export_flags = FLAG_HAS_FLAGS | FLAG_READ_ONLY;
        let size = self.disk.len() as u64;
        let mut tls_done = false;
        loop {
            let request = match decode_option(&buf).map_err(broken)? {
                Decoded::Done { value, consumed } => {
                    buf.advance(consumed);
                    value
                }
                Decoded::NeedMore(_) => {
                    fill(&mut io, &mut buf).await?;
                    continue;
                }
            };
            let option = request.option;
            self.log.lock().unwrap().options.push(option);
            let reply = |code, payload: &[u8]| encode_option_reply(option, code, payload);
            match option {
                OPT_STARTTLS => match &self.tls {
                    Some(config) if !tls_done => {
                        io.write_all(&reply(ReplyCode::Ack, &[])).await?;
                        let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                        io = Box::new(acceptor.accept(io).await?);
                        tls_done = true;
                    }
                    Some(_) => io.write_all(&reply(ReplyCode::Invalid, &[])).await?,
                    None => io.write_all(&reply(ReplyCode::Policy, b"no TLS")).await?,
                },
                _ if self.tls.is_some() && !tls_done => {
                    io.write_all(&reply(ReplyCode::TlsRequired, &[])).await?
                }
                OPT_GO if self.fault == Fault::CloseOnGo => return Ok(()),
                OPT_GO | OPT_INFO if self.go => {
                    let info = decode_info_request(option, &request.data).map_err(broken)?;
                    if info.export_name != EXPORT.as_bytes() {
                        let message = format!(
                            "export '{}' not present",
                            String::from_utf8_lossy(&info.export_name)
                        );
                        io.write_all(&reply(ReplyCode::UnknownExport, message.as_bytes()))
                            .await?;
                        continue;
                    }
                    let mut out = reply(ReplyCode::Info, &encode_info_export(size, export_flags));
                    if let Some(sizes) = self.block_sizes {
                        out.extend(reply(ReplyCode::Info, &encode_info_block_size(sizes)));
                    }
                    out.extend(reply(ReplyCode::Ack, &[]));
                    io.write_all(&out).await?;
                    if option == OPT_GO {
                        break;
                    }
                }
                OPT_EXPORT_NAME => {
                    if request.data != EXPORT.as_bytes() {
                        return Ok(());
                    }
                    let zeroes = client_flags & FLAG_C_NO_ZEROES == 0;
                    io.write_all(&encode_export_name_reply(size, export_flags, zeroes))
                        .await?;
                    break;
                }
                OPT_ABORT => {
                    io.write_all(&reply(ReplyCode::Ack, &[])).await?;
                    return Ok(());
                }
                _ => io.write_all(&reply(ReplyCode::Unsupported, &[])).await?,
            }
        }
        let mut reads = 0;
        loop {
            // Every request that arrived together is answered in a shuffled order.
            let mut batch = Vec::new();
            while let Decoded::Done { value, consumed } = decode_request(&buf).map_err(broken)? {
                buf.advance(consumed);
                batch.push(value);
            }
            if batch.is_empty() {
                fill(&mut io, &mut buf).await?;
                continue;
            }
            for i in (1..batch.len()).rev() {
                batch.swap(i, rng.below(i + 1));
            }
            if self.fault == Fault::Stall {
                continue;
            }
            let mut out = Vec::new();
            for request in batch {
                if request.command == CMD_DISC {
                    self.log.lock().unwrap().disconnected = true;
                    return io.shutdown().await;
                }
                assert_eq!(request.command, CMD_READ);
                self.log
                    .lock()
                    .unwrap()
                    .reads
                    .push((request.offset, request.len));
                reads += 1;
                let (start, len) = (request.offset as usize, request.len as usize);
                let data = &self.disk[start..start + len];
                match self.fault {
                    Fault::FailReadAt(at) if (start..start + len).contains(&(at as usize)) => {
                        out.extend(encode_simple_reply(request.handle, Some(ServerError::EIO)));
                        continue;
                    }
                    Fault::CloseMidData(n) if n == reads => {
                        out.extend(encode_simple_reply(request.handle, None));
                        out.extend(&data[..len / 2]);
                        io.write_all(&out).await?;
                        io.flush().await?;
                        return Ok(());
                    }
                    Fault::CloseBeforeReply(n) if n == reads => {
                        io.write_all(&out).await?;
                        io.flush().await?;
                        return Ok(());
                    }
                    Fault::WrongHandle => {
                        out.extend(encode_simple_reply(request.handle ^ 0xff00, None));
                    }
                    Fault::Structured => {
                        out.extend(STRUCTURED_REPLY_MAGIC.to_be_bytes());
                        out.extend([0; 16]);
                    }
                    _ => out.extend(encode_simple_reply(request.handle, None)),
                }
                out.extend_from_slice(data);
            }
            // Written in random pieces, so the client sees every split.
            let mut rest = &out[..];
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len().min(100_000));
                io.write_all(&rest[..n]).await?;
                io.flush().await?;
                rest = &rest[n..];
            }
        }
    }
}

async fn fill(io: &mut Box<dyn Io>, buf: &mut BytesMut) -> std::io::Result<()> {
    buf.reserve(4096);
    if io.read_buf(buf).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn broken(e: NbdError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    (0..len).map(|_| rng.below(256) as u8).collect()
}

/// Whatever a test does, it ends within this: a hang is a failure.
async fn bounded<T>(what: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), what)
        .await
        .expect("the client hung")
}

fn identity() -> (Arc<rustls::ServerConfig>, Fingerprint, String) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert: CertificateDer<'static> = generated.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
    let fingerprint = Fingerprint::of_der(&cert);
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    (Arc::new(config), fingerprint, generated.cert.pem())
}

// ---------------------------------------------------------------------------------------------
// The model: random reads equal the disk.

/// Batches of reads, each an offset and a length.
type Batches = Vec<Vec<(u64, usize)>>;

/// A disk size, batches of reads within it, a seed for the disk and the server, and bits
/// choosing the server's shape.
fn read_batches() -> impl Strategy<Value = (usize, Batches, u64, u8)> {
    (1usize..(3 << 20), any::<u64>(), any::<u8>()).prop_flat_map(|(size, seed, shape)| {
        let range = (0..size as u64).prop_flat_map(move |offset| {
            (
                Just(offset),
                1..=((size as u64 - offset).min(1 << 20)) as usize,
            )
        });
        (
            Just(size),
            prop::collection::vec(prop::collection::vec(range, 1..12), 1..4),
            Just(seed),
            Just(shape),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random batches of random reads equal the disk's bytes, with replies shuffled and cut
    /// anywhere, through `NBD_OPT_GO` or the `NBD_OPT_EXPORT_NAME` fallback, with a server
    /// maximum request size forcing reads to be split, and 1 to 16 reads in flight.
    #[test]
    fn random_reads_equal_the_disk((size, batches, seed, shape) in read_batches()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let disk = pattern(seed, size);
            let mut server = Server::new(disk.clone());
            server.seed = seed;
            server.go = shape & 1 == 0;
            server.no_zeroes = shape & 2 == 0;
            if shape & 4 == 0 {
                server.block_sizes = Some(BlockSizes { minimum: 1, preferred: 4096, maximum: 40_000 });
            }
            let (mut client, info) = bounded(NbdClient::connect(server.start(), EXPORT, None))
                .await
                .unwrap();
            prop_assert_eq!(info.size, size as u64);
            client.set_max_in_flight(1 + (shape as usize >> 4));
            for batch in &batches {
                let mut bufs: Vec<Vec<u8>> = batch.iter().map(|&(_, len)| vec![0xEE; len]).collect();
                let mut reads: Vec<(u64, &mut [u8])> = batch
                    .iter()
                    .zip(bufs.iter_mut())
                    .map(|(&(offset, _), buf)| (offset, buf.as_mut_slice()))
                    .collect();
                bounded(client.read_many(&mut reads)).await.unwrap();
                for (&(offset, len), buf) in batch.iter().zip(&bufs) {
                    prop_assert!(buf[..] == disk[offset as usize..offset as usize + len]);
                }
            }
            let limit = if server.go && server.block_sizes.is_some() { 40_000 } else { 32 << 20 };
            let log = server.log.lock().unwrap();
            prop_assert!(log.reads.iter().all(|&(_, len)| len <= limit));
            prop_assert_eq!(log.client_flags & FLAG_C_NO_ZEROES != 0, server.no_zeroes);
            Ok(())
        })?;
    }
}

// ---------------------------------------------------------------------------------------------
// Handshakes.

#[tokio::test]
async fn tls_with_a_pinned_certificate_reads_and_a_wrong_pin_fails() {
    let (config, fingerprint, pem) = identity();
    let disk = pattern(7, 1 << 20);
    let mut server = Server::new(disk.clone());
    server.tls = Some(config);
    for tls in [
        NbdTls::new(&Trust::Pinned(fingerprint), "localhost").unwrap(),
        NbdTls::pinned_pem(&pem, "localhost").unwrap(),
    ] {
        let (mut client, info) = bounded(NbdClient::connect(server.start(), EXPORT, Some(&tls)))
            .await
            .unwrap();
        assert!(client.is_tls());
        assert_eq!(tls.observed_fingerprint(), Some(fingerprint));
        assert_eq!(info.size, disk.len() as u64);
        let mut buf = vec![0; 300_000];
        bounded(client.read(12_345, &mut buf)).await.unwrap();
        assert!(buf[..] == disk[12_345..312_345]);
        bounded(client.disconnect()).await.unwrap();
    }
    assert_eq!(
        server.log.lock().unwrap().options,
        vec![OPT_STARTTLS, OPT_GO, OPT_STARTTLS, OPT_GO]
    );

    let wrong = NbdTls::new(&Trust::Pinned(Fingerprint([9; 32])), "localhost").unwrap();
    let e = bounded(NbdClient::connect(server.start(), EXPORT, Some(&wrong)))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, NbdError::Tls(m) if m.contains("fingerprint mismatch")),
        "{e}"
    );
}

#[tokio::test]
async fn a_server_that_wants_tls_or_refuses_it_says_so() {
    let (config, fingerprint, _) = identity();
    let mut forced = Server::new(vec![0; 4096]);
    forced.tls = Some(config);
    let e = bounded(NbdClient::connect(forced.start(), EXPORT, None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            NbdError::Refused {
                option: OPT_GO,
                code: ReplyCode::TlsRequired,
                ..
            }
        ),
        "{e}"
    );
    let plain = Server::new(vec![0; 4096]);
    let tls = NbdTls::new(&Trust::Pinned(fingerprint), "localhost").unwrap();
    let (stream, task) = plain.start_task();
    let e = bounded(NbdClient::connect(stream, EXPORT, Some(&tls)))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "NBD server refused NBD_OPT_STARTTLS: NBD_REP_ERR_POLICY (no TLS)"
    );
    // Nothing else was asked of a server that refused TLS: the client left politely (and
    // did not wait for the abort's acknowledgement, which the server may fail to send).
    let _ = bounded(task).await.unwrap();
    assert_eq!(
        plain.log.lock().unwrap().options,
        vec![OPT_STARTTLS, OPT_ABORT]
    );
}

#[tokio::test]
async fn unknown_exports_and_vanishing_servers_are_named_without_the_session() {
    let server = Server::new(vec![0; 4096]);
    let e = bounded(NbdClient::connect(
        server.start(),
        "/other?session_id=OpaqueRef:s3cr3t",
        None,
    ))
    .await
    .unwrap_err();
    let shown = e.to_string();
    assert!(shown.contains("NBD_REP_ERR_UNKNOWN"), "{shown}");
    assert!(!shown.contains("s3cr3t"), "{shown}");

    let mut closing = Server::new(vec![0; 4096]);
    closing.fault = Fault::CloseOnGo;
    let e = bounded(NbdClient::connect(closing.start(), EXPORT, None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            NbdError::Closed {
                phase: Phase::Option(OPT_GO),
                ..
            }
        ),
        "{e}"
    );

    // The fallback cannot report errors: the server just closes.
    let mut old = Server::new(vec![0; 4096]);
    old.go = false;
    let e = bounded(NbdClient::connect(old.start(), "/nope", None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            NbdError::Closed {
                phase: Phase::Option(OPT_EXPORT_NAME),
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        old.log.lock().unwrap().options,
        vec![OPT_GO, OPT_EXPORT_NAME]
    );
}

#[tokio::test]
async fn over_tcp_by_address_and_port() {
    let disk = pattern(11, 256 << 10);
    let server = Server::new(disk.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let serving = server.clone();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = serving.serve(Box::new(stream)).await;
    });
    let (mut client, info) = bounded(NbdClient::connect_tcp("127.0.0.1", port, EXPORT, None))
        .await
        .unwrap();
    assert_eq!(info.size, disk.len() as u64);
    let mut buf = vec![0; disk.len()];
    bounded(client.read(0, &mut buf)).await.unwrap();
    assert!(buf == disk);
    bounded(client.disconnect()).await.unwrap();
    // Nobody listening: an I/O error of the first phase.
    let e = bounded(NbdClient::connect_tcp("127.0.0.1", port, EXPORT, None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            NbdError::Io {
                phase: Phase::Greeting,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn probe_describes_the_export_and_leaves() {
    let mut server = Server::new(vec![0; 1 << 16]);
    server.block_sizes = Some(BlockSizes {
        minimum: 512,
        preferred: 4096,
        maximum: 1 << 20,
    });
    let info = bounded(NbdClient::probe(server.start(), EXPORT, None))
        .await
        .unwrap();
    assert_eq!((info.size, info.min_block()), (1 << 16, 512));
    assert!(info.read_only());
    assert_eq!(
        server.log.lock().unwrap().options,
        vec![OPT_INFO, OPT_ABORT]
    );
}

// ---------------------------------------------------------------------------------------------
// Transmission.

#[tokio::test]
async fn large_reads_are_split_and_pipelined_within_the_server_maximum() {
    let disk = pattern(3, 4 << 20);
    let mut server = Server::new(disk.clone());
    server.block_sizes = Some(BlockSizes {
        minimum: 512,
        preferred: 4096,
        maximum: 64 << 10,
    });
    let (stream, task) = server.start_task();
    let (mut client, _) = bounded(NbdClient::connect(stream, EXPORT, None))
        .await
        .unwrap();
    let mut buf = vec![0; 3 << 20];
    bounded(client.read(512, &mut buf)).await.unwrap();
    assert!(buf[..] == disk[512..512 + (3 << 20)]);
    // Unaligned or out-of-range reads are refused before anything is sent.
    for (offset, len) in [(100, 512), (0, 100), ((4 << 20) - 512, 1024)] {
        let e = client.read(offset, &mut vec![0; len]).await.unwrap_err();
        assert!(matches!(e, NbdError::Request(_)), "{e}");
    }
    bounded(client.disconnect()).await.unwrap();
    bounded(task).await.unwrap().unwrap();
    let log = server.log.lock().unwrap();
    assert_eq!(log.reads.len(), 48);
    assert!(log.reads.iter().all(|&(_, len)| len == 64 << 10));
    assert!(log.disconnected);
}

#[tokio::test]
async fn a_failed_read_is_reported_and_the_connection_goes_on() {
    let disk = pattern(5, 1 << 20);
    let mut server = Server::new(disk.clone());
    server.fault = Fault::FailReadAt(70_000);
    let (mut client, _) = bounded(NbdClient::connect(server.start(), EXPORT, None))
        .await
        .unwrap();
    let (mut a, mut b, mut c) = (vec![0; 4096], vec![0; 4096], vec![0; 4096]);
    let e = bounded(client.read_many(&mut [
        (0, a.as_mut_slice()),
        (69_632, b.as_mut_slice()),
        (200_000, c.as_mut_slice()),
    ]))
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            NbdError::ReadFailed {
                offset: 69_632,
                len: 4096,
                error: ServerError::EIO,
                ..
            }
        ),
        "{e}"
    );
    assert!(a[..] == disk[..4096] && c[..] == disk[200_000..204_096]);
    bounded(client.read(1 << 19, &mut b)).await.unwrap();
    assert!(b[..] == disk[1 << 19..(1 << 19) + 4096]);
}

#[tokio::test]
async fn a_server_closing_mid_reply_is_an_error_not_a_hang() {
    for (fault, words) in [
        (
            Fault::CloseMidData(3),
            "in the middle of the data of read handle",
        ),
        (Fault::CloseBeforeReply(2), "reads unanswered"),
    ] {
        for tls in [false, true] {
            let (config, fingerprint, _) = identity();
            let mut server = Server::new(pattern(9, 1 << 20));
            server.fault = fault;
            server.block_sizes = Some(BlockSizes {
                minimum: 1,
                preferred: 4096,
                maximum: 100_000,
            });
            let client_tls = tls.then(|| {
                server.tls = Some(config);
                NbdTls::new(&Trust::Pinned(fingerprint), "localhost").unwrap()
            });
            let (mut client, _) = bounded(NbdClient::connect(
                server.start(),
                EXPORT,
                client_tls.as_ref(),
            ))
            .await
            .unwrap();
            let mut buf = vec![0; 1 << 20];
            let e = bounded(client.read(0, &mut buf)).await.unwrap_err();
            assert!(
                matches!(&e, NbdError::Closed { phase: Phase::Transmission, context } if context.contains(words)),
                "tls {tls}: {e}"
            );
            // The connection is now unusable, and says why.
            let again = client.read(0, &mut buf[..10]).await.unwrap_err();
            assert!(again.to_string().contains("unusable"), "{again}");
        }
    }
}

#[tokio::test]
async fn a_read_cancelled_by_a_timeout_leaves_the_connection_unusable() {
    let mut server = Server::new(vec![0; 1 << 20]);
    server.fault = Fault::Stall;
    let (mut client, _) = bounded(NbdClient::connect(server.start(), EXPORT, None))
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let timed_out = tokio::time::timeout(Duration::from_millis(100), client.read(0, &mut buf));
    assert!(timed_out.await.is_err());
    let e = bounded(client.read(0, &mut buf)).await.unwrap_err();
    assert!(e.to_string().contains("cancelled"), "{e}");
    bounded(client.disconnect()).await.unwrap();
}

#[tokio::test]
async fn replies_the_client_never_asked_for_are_refused() {
    for (fault, field) in [
        (Fault::WrongHandle, "handle"),
        (Fault::Structured, "reply magic"),
    ] {
        let mut server = Server::new(vec![1; 8192]);
        server.fault = fault;
        let (mut client, _) = bounded(NbdClient::connect(server.start(), EXPORT, None))
            .await
            .unwrap();
        let e = bounded(client.read(0, &mut [0; 512])).await.unwrap_err();
        assert!(
            matches!(&e, NbdError::Protocol { phase: Phase::Transmission, field: f, .. } if *f == field),
            "{e}"
        );
    }
}
