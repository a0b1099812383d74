//! Interoperability with a real NBD server, qemu-nbd: a raw file of random bytes served by it
//! reads back byte for byte through vhdsync's client (`NBD_OPT_GO` with qemu's block sizes,
//! pipelined 64 KiB extents as the CBT path reads them, whole-disk reads, several connections
//! at once, STARTTLS against qemu's GnuTLS with a pinned certificate), and qemu's refusals
//! come back as typed errors.
//!
//! Without qemu-nbd the tests print a note and pass, unless `VHDSYNC_REQUIRE_QEMU` is set,
//! where they fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pattern;
use tempfile::TempDir;
use tokio::net::UnixStream;
use vhdsync::nbd::wire::{OPT_GO, OPT_STARTTLS};
use vhdsync::nbd::{NbdClient, NbdError, NbdTls, ReplyCode};
use vhdsync::{Fingerprint, Trust};

const NAME: &str = "vdi-under-test";
const SIZE: usize = 24 << 20;

fn qemu_nbd() -> Option<&'static str> {
    let found = Command::new("qemu-nbd")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "qemu-nbd");
    if found.is_none() {
        assert!(
            std::env::var_os("VHDSYNC_REQUIRE_QEMU").is_none(),
            "qemu-nbd not found, and VHDSYNC_REQUIRE_QEMU is set"
        );
        eprintln!("note: qemu-nbd not found; qemu-nbd interop test skipped");
    }
    found
}

/// A qemu-nbd serving a file read-only on a Unix socket, killed on drop.
struct QemuNbd {
    child: Child,
    socket: PathBuf,
}

impl QemuNbd {
    fn start(qemu: &str, dir: &Path, file: &Path, extra: &[&str]) -> QemuNbd {
        let socket = dir.join(format!("nbd-{}.sock", extra.len()));
        let child = Command::new(qemu)
            .args([
                "--persistent",
                "--shared=8",
                "--read-only",
                "--format",
                "raw",
            ])
            .args(["--export-name", NAME])
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .arg(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu-nbd starts");
        let mut server = QemuNbd { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.socket.exists() {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("qemu-nbd exited ({status}) before listening");
            }
            assert!(
                Instant::now() < deadline,
                "qemu-nbd did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// A connection; qemu creates the socket just before it listens on it.
    async fn connect(&self) -> UnixStream {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(&self.socket).await {
                Ok(stream) => return stream,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("qemu-nbd not listening yet: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("connecting to qemu-nbd: {e}"),
            }
        }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn disk(dir: &TempDir) -> (PathBuf, Vec<u8>) {
    let path = dir.path().join("disk.raw");
    let bytes = pattern(20, SIZE);
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

#[tokio::test]
async fn reads_through_qemu_nbd_equal_the_file() {
    let Some(qemu) = qemu_nbd() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (file, bytes) = disk(&dir);
    let server = QemuNbd::start(qemu, dir.path(), &file, &[]);

    let (mut client, info) = NbdClient::connect(server.connect().await, NAME, None)
        .await
        .unwrap();
    assert_eq!(info.size, SIZE as u64);
    assert!(info.read_only());
    assert!(!client.is_tls());
    // qemu-nbd answers NBD_OPT_GO with its block sizes.
    let sizes = info
        .block_sizes
        .expect("qemu-nbd sends NBD_INFO_BLOCK_SIZE");
    assert!(sizes.maximum >= 1 << 20, "{sizes:?}");

    // The CBT path's shape: scattered 64 KiB extents, pipelined.
    let extents: Vec<u64> = (0..SIZE as u64 >> 16)
        .filter(|i| i % 7 == 3 || i % 11 == 0)
        .map(|i| i << 16)
        .collect();
    let mut bufs = vec![vec![0u8; 64 << 10]; extents.len()];
    let mut reads: Vec<(u64, &mut [u8])> = extents
        .iter()
        .zip(bufs.iter_mut())
        .map(|(&offset, buf)| (offset, buf.as_mut_slice()))
        .collect();
    client.read_many(&mut reads).await.unwrap();
    for (&offset, buf) in extents.iter().zip(&bufs) {
        let at = offset as usize;
        assert!(buf[..] == bytes[at..at + buf.len()], "extent at {offset}");
    }

    // Odd ranges, down to the minimum block size qemu advertised.
    let min = u64::from(info.min_block());
    for (offset, len) in [
        (0, min),
        (min * 3, 4096 * 3),
        (SIZE as u64 - 8 * min, 8 * min),
    ] {
        let mut buf = vec![0u8; len as usize];
        client.read(offset, &mut buf).await.unwrap();
        assert!(buf[..] == bytes[offset as usize..(offset + len) as usize]);
    }

    // The whole disk in one call.
    let mut whole = vec![0u8; SIZE];
    let started = Instant::now();
    client.read(0, &mut whole).await.unwrap();
    let took = started.elapsed();
    assert!(whole == bytes);
    println!(
        "qemu-nbd: {} MiB in {took:.2?} over one connection ({:.0} MiB/s)",
        SIZE >> 20,
        (SIZE >> 20) as f64 / took.as_secs_f64()
    );
    // Past the end: refused before sending.
    let e = client
        .read(SIZE as u64 - min, &mut vec![0u8; 2 * min as usize])
        .await
        .unwrap_err();
    assert!(matches!(e, NbdError::Request(_)), "{e}");
    client.disconnect().await.unwrap();

    // Several connections at once, each reading its quarter.
    let quarter = SIZE / 4;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let stream = server.connect().await;
        tasks.push(tokio::spawn(async move {
            let (mut client, _) = NbdClient::connect(stream, NAME, None).await.unwrap();
            let mut buf = vec![0u8; quarter];
            client.read((i * quarter) as u64, &mut buf).await.unwrap();
            client.disconnect().await.unwrap();
            buf
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        assert!(task.await.unwrap()[..] == bytes[i * quarter..(i + 1) * quarter]);
    }

    // NBD_OPT_INFO then NBD_OPT_ABORT.
    let probed = NbdClient::probe(server.connect().await, NAME, None)
        .await
        .unwrap();
    assert_eq!(probed, info);
}

#[tokio::test]
async fn qemu_nbd_refusals_are_typed_and_hide_the_export_name() {
    let Some(qemu) = qemu_nbd() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = disk(&dir);
    let server = QemuNbd::start(qemu, dir.path(), &file, &[]);
    let name = "/other?session_id=OpaqueRef:s3cr3t";
    let e = NbdClient::connect(server.connect().await, name, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            NbdError::Refused {
                option: OPT_GO,
                code: ReplyCode::UnknownExport,
                ..
            }
        ),
        "{e}"
    );
    assert!(!e.to_string().contains("s3cr3t"), "{e}");

    // A plain server asked for TLS refuses it, and the client stops there.
    let tls = NbdTls::new(&Trust::Pinned(Fingerprint([1; 32])), "localhost").unwrap();
    let e = NbdClient::connect(server.connect().await, NAME, Some(&tls))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            NbdError::Refused {
                option: OPT_STARTTLS,
                ..
            }
        ),
        "{e}"
    );
}

/// qemu's x509 credentials in `dir`: a CA, and a server certificate it signed (qemu checks
/// the basic constraints and key usages of both). Returns the server certificate's PEM, which
/// the client pins as it pins the one `VDI.get_nbd_info` returns.
fn qemu_credentials(dir: &Path) -> String {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::create_dir(dir).unwrap();
    std::fs::write(dir.join("ca-cert.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server-cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server-key.pem"), key.serialize_pem()).unwrap();
    cert.pem()
}

#[tokio::test]
async fn starttls_with_qemu_nbd_and_a_pinned_certificate() {
    let Some(qemu) = qemu_nbd() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (file, bytes) = disk(&dir);
    let pki = dir.path().join("pki");
    let server_pem = qemu_credentials(&pki);
    let object = format!(
        "tls-creds-x509,id=tls0,endpoint=server,verify-peer=off,dir={}",
        pki.display()
    );
    let server = QemuNbd::start(
        qemu,
        dir.path(),
        &file,
        &["--object", &object, "--tls-creds", "tls0"],
    );

    let tls = NbdTls::pinned_pem(&server_pem, "localhost").unwrap();
    let (mut client, info) = NbdClient::connect(server.connect().await, NAME, Some(&tls))
        .await
        .unwrap();
    assert!(client.is_tls());
    assert_eq!(info.size, SIZE as u64);
    let mut buf = vec![0u8; 5 << 20];
    client.read(1 << 20, &mut buf).await.unwrap();
    assert!(buf[..] == bytes[1 << 20..6 << 20]);
    client.disconnect().await.unwrap();

    // Without TLS, qemu (FORCEDTLS) says it is required.
    let e = NbdClient::connect(server.connect().await, NAME, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            NbdError::Refused {
                code: ReplyCode::TlsRequired,
                ..
            }
        ),
        "{e}"
    );
    // Another pinned certificate: the handshake fails, naming both fingerprints.
    let wrong = NbdTls::new(&Trust::Pinned(Fingerprint([7; 32])), "localhost").unwrap();
    let e = NbdClient::connect(server.connect().await, NAME, Some(&wrong))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, NbdError::Tls(m) if m.contains("fingerprint mismatch")),
        "{e}"
    );
}
