//! The lab host's NBD server, read with vhdsync's own NBD client: `VDI.get_nbd_info` before
//! and after a network offers NBD, whole VDIs read over plain and TLS connections equal the
//! lab's hash of them, several connections at once, and the refusals: no NBD network, TLS
//! required or refused, an invalid session, a VDI whose data was destroyed, hostile bytes,
//! and the bounds: a cap on connections, a time limit on handshakes.

mod common;

use common::lab_serve::{LabHost, PASSWORD, login};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vhdsync::lab::http::{LabServer, Limits};
use vhdsync::lab::nbd::NbdOptions;
use vhdsync::lab::{DEFAULT_SR_CAPACITY, InitConfig, Lab};
use vhdsync::nbd::wire::OPT_GO;
use vhdsync::nbd::{NbdClient, NbdError, NbdTls, Phase, ReplyCode};
use vhdsync::xapi::rpc::Value;

const MIB: u64 = 1 << 20;
const DISK: u64 = 16 * MIB;

type Host = LabHost;

/// A host with one VM and its one 16 MiB disk, serving HTTPS when `tls`.
async fn host(tls: bool) -> Host {
    LabHost::start(&["vm:16M"], &InitConfig::default(), tls).await
}

impl LabHost {
    fn vdi(&self) -> String {
        self.report.vms[0].disks[0].vdi.reference.clone()
    }

    fn management(&self) -> String {
        self.report.networks[0].ids.reference.clone()
    }

    async fn purpose(&self, change: &str, purpose: &str) {
        let network = self.management();
        self.ok(
            &format!("network.{change}_purpose"),
            vec![network.into(), purpose.into()],
        )
        .await;
    }

    /// Pseudo-random guest writes over a few regions, some across 2 MiB blocks.
    async fn scribble(&self, vdi: &str, seed: i64) {
        for (offset, len) in [
            (0, 64 << 10),
            (3 * MIB - 4096, 12288),
            (9 * MIB + 512, 1536),
            (DISK - 4096, 4096),
        ] {
            let params = vec![
                vdi.into(),
                Value::Int(offset as i64),
                Value::Int(len),
                Value::Int(seed),
            ];
            self.ok("lab.write", params).await;
        }
    }

    async fn nbd_info(&self, vdi: &str) -> Vec<NbdInfo> {
        let value = self.ok("VDI.get_nbd_info", vec![vdi.into()]).await;
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| {
                let text =
                    |field: &str| entry.get(field).and_then(Value::as_str).unwrap().to_owned();
                NbdInfo {
                    exportname: text("exportname"),
                    address: text("address"),
                    port: entry.get("port").and_then(Value::as_i64).unwrap() as u16,
                    cert: text("cert"),
                    subject: text("subject"),
                }
            })
            .collect()
    }

    async fn hash(&self, vdi: &str) -> String {
        self.text("lab.hash", vec![vdi.into()]).await
    }
}

#[derive(Debug, Clone)]
struct NbdInfo {
    exportname: String,
    address: String,
    port: u16,
    cert: String,
    subject: String,
}

/// Whatever a test does, it ends within this: a hang is a failure.
async fn bounded<T>(what: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), what)
        .await
        .expect("the NBD exchange hung")
}

/// Read `len` bytes at `offset` of the export over one connection.
async fn read(
    info: &NbdInfo,
    tls: Option<&NbdTls>,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, NbdError> {
    bounded(async {
        let (mut client, export) =
            NbdClient::connect_tcp(&info.address, info.port, &info.exportname, tls).await?;
        assert_eq!(export.size, DISK);
        assert!(export.read_only());
        assert_eq!(client.is_tls(), tls.is_some());
        let mut data = vec![0u8; len as usize];
        client.read(offset, &mut data).await?;
        client.disconnect().await?;
        Ok(data)
    })
    .await
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_lazily_made_tls_exports_read_what_the_lab_holds() {
    let host = host(false).await;
    let vdi = host.vdi();
    host.scribble(&vdi, 7).await;
    let empty = Value::Struct(Default::default());
    let snapshot = host
        .text("VDI.snapshot", vec![vdi.as_str().into(), empty])
        .await;
    host.scribble(&vdi, 8).await;

    // No network offers NBD: nothing to tell, and the server closes at once.
    assert!(host.nbd_info(&vdi).await.is_empty());
    let addr = host.server.nbd_addr();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), host.server.local_addr().port());
    let err = bounded(NbdClient::connect_tcp("127.0.0.1", addr.port(), "/x", None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NbdError::Closed {
                phase: Phase::Greeting,
                ..
            }
        ),
        "{err}"
    );

    host.purpose("add", "insecure_nbd").await;
    let infos = host.nbd_info(&vdi).await;
    assert_eq!(infos.len(), 1, "{infos:?}");
    let info = &infos[0];
    let uuid = host.text("VDI.get_uuid", vec![vdi.as_str().into()]).await;
    let session = host.client.session_id().expose().to_owned();
    assert_eq!(info.exportname, format!("/{uuid}?session_id={session}"));
    assert_eq!(
        (info.address.as_str(), info.port),
        ("127.0.0.1", addr.port())
    );
    assert!(
        info.cert.starts_with("-----BEGIN CERTIFICATE-----"),
        "{}",
        info.cert
    );
    assert_eq!(info.subject, "localhost");

    let data = read(info, None, 0, DISK).await.unwrap();
    assert_eq!(sha256(&data), host.hash(&vdi).await);
    let snapshot_info = host.nbd_info(&snapshot).await.remove(0);
    let snapshot_data = read(&snapshot_info, None, 0, DISK).await.unwrap();
    assert_eq!(sha256(&snapshot_data), host.hash(&snapshot).await);
    assert_ne!(snapshot_data, data);

    // insecure_nbd offers no TLS.
    let tls = NbdTls::pinned_pem(&info.cert, &info.subject).unwrap();
    let err = read(info, Some(&tls), 0, 4096).await.unwrap_err();
    assert!(
        matches!(
            err,
            NbdError::Refused {
                code: ReplyCode::Policy,
                ..
            }
        ),
        "{err}"
    );

    // Purpose nbd: TLS with the lab's certificate, made now (the lab serves plain HTTP).
    host.purpose("remove", "insecure_nbd").await;
    host.purpose("add", "nbd").await;
    let info = host.nbd_info(&vdi).await.remove(0);
    let tls = NbdTls::pinned_pem(&info.cert, &info.subject).unwrap();
    let head = read(&info, Some(&tls), 0, 4 * MIB).await.unwrap();
    assert_eq!(head, data[..4 * MIB as usize]);
    let err = read(&info, None, 0, 4096).await.unwrap_err();
    assert!(
        matches!(
            err,
            NbdError::Refused {
                code: ReplyCode::TlsRequired,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_exports_present_the_https_certificate() {
    let host = host(true).await;
    let vdi = host.vdi();
    host.scribble(&vdi, 3).await;
    host.purpose("add", "nbd").await;
    let info = host.nbd_info(&vdi).await.remove(0);
    let tls = NbdTls::pinned_pem(&info.cert, &info.subject).unwrap();
    let data = read(&info, Some(&tls), 0, DISK).await.unwrap();
    assert_eq!(sha256(&data), host.hash(&vdi).await);
    assert_eq!(tls.observed_fingerprint(), host.server.fingerprint());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_several_connections_at_once() {
    let host = host(false).await;
    let vdi = host.vdi();
    host.scribble(&vdi, 11).await;
    host.purpose("add", "insecure_nbd").await;
    let info = host.nbd_info(&vdi).await.remove(0);

    // Four connections, a quarter of the disk each, all at once.
    let quarter = DISK / 4;
    let pieces = tokio::join!(
        read(&info, None, 0, quarter),
        read(&info, None, quarter, quarter),
        read(&info, None, 2 * quarter, quarter),
        read(&info, None, 3 * quarter, quarter),
    );
    let whole: Vec<u8> = [pieces.0, pieces.1, pieces.2, pieces.3]
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    assert_eq!(sha256(&whole), host.hash(&vdi).await);

    // An invalid session closes the connection during NBD_OPT_GO, as xapi-nbd does.
    let uuid = host.text("VDI.get_uuid", vec![vdi.as_str().into()]).await;
    let forged = NbdInfo {
        exportname: format!("/{uuid}?session_id=OpaqueRef:forged"),
        ..info.clone()
    };
    let err = read(&forged, None, 0, 4096).await.unwrap_err();
    assert!(
        matches!(
            err,
            NbdError::Closed {
                phase: Phase::Option(OPT_GO),
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.to_string().contains("forged"), "{err}");

    // A VDI whose data was destroyed is no export any more.
    host.ok("VDI.enable_cbt", vec![vdi.as_str().into()]).await;
    let empty = Value::Struct(Default::default());
    let snapshot = host
        .text("VDI.snapshot", vec![vdi.as_str().into(), empty])
        .await;
    let snapshot_info = host.nbd_info(&snapshot).await.remove(0);
    host.ok("VDI.data_destroy", vec![snapshot.as_str().into()])
        .await;
    let err = read(&snapshot_info, None, 0, 4096).await.unwrap_err();
    assert!(
        matches!(
            err,
            NbdError::Closed {
                phase: Phase::Option(OPT_GO),
                ..
            }
        ),
        "{err}"
    );

    // Hostile bytes end their own connection only.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", info.port))
        .await
        .unwrap();
    let mut greeting = [0u8; 18];
    bounded(raw.read_exact(&mut greeting)).await.unwrap();
    raw.write_all(&[0xff; 64]).await.unwrap();
    let mut rest = Vec::new();
    let _ = bounded(raw.read_to_end(&mut rest)).await;
    let again = read(&info, None, DISK - 4096, 4096).await.unwrap();
    assert_eq!(again, whole[(DISK - 4096) as usize..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_and_idle_handshakes_end() {
    let dir = tempfile::tempdir().unwrap();
    Lab::init_with(dir.path(), PASSWORD, &[], DEFAULT_SR_CAPACITY).unwrap();
    let lab = Lab::open(dir.path()).unwrap();
    let options = NbdOptions {
        port: 0,
        max_connections: 1,
        handshake_timeout: Duration::from_millis(1500),
    };
    let any = "127.0.0.1:0".parse().unwrap();
    let server = LabServer::start_with(lab.clone(), any, false, Limits::default(), options)
        .await
        .unwrap();
    let client = login(&server.base_url()).await;
    let networks = client.call("network.get_all", vec![]).await.unwrap();
    let network = networks.as_array().unwrap()[0].as_str().unwrap().to_owned();
    client
        .call(
            "network.add_purpose",
            vec![network.into(), "insecure_nbd".into()],
        )
        .await
        .unwrap();
    let port = server.nbd_addr().port();
    let greeted = |mut tcp: tokio::net::TcpStream, wait: Duration| async move {
        let mut greeting = [0u8; 18];
        let got = tokio::time::timeout(wait, tcp.read_exact(&mut greeting)).await;
        (tcp, got.is_ok_and(|r| r.is_ok()))
    };
    let first = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (first, ok) = greeted(first, Duration::from_secs(5)).await;
    assert!(ok, "the first connection is served");
    let second = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (second, ok) = greeted(second, Duration::from_millis(300)).await;
    assert!(!ok, "the second waits while the only place is taken");
    // The first never negotiates: its handshake time runs out, and the second gets in.
    let mut first = first;
    let mut rest = Vec::new();
    let closed = bounded(first.read_to_end(&mut rest)).await;
    assert!(closed.is_ok() && rest.is_empty(), "{closed:?} {rest:?}");
    let mut second = second;
    let mut greeting = [0u8; 18];
    bounded(second.read_exact(&mut greeting)).await.unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    server.shutdown(Duration::from_secs(1)).await;
}

/// `vhdsync lab serve` prints the URL first, as before, then `nbd ADDRESS:PORT`, on the port
/// `--nbd-port` asks for.
#[test]
fn lab_serve_prints_the_nbd_address_on_a_line_of_its_own() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_vhdsync");
    let init = Command::new(bin)
        .args(["lab", "init", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(bin)
        .args(["lab", "serve", "--dir"])
        .arg(dir.path())
        .args(["--nbd-port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = [String::new(), String::new()];
    for line in &mut lines {
        out.read_line(line).unwrap();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(lines[0].starts_with("http://127.0.0.1:"), "{lines:?}");
    assert_eq!(lines[1].trim_end(), format!("nbd 127.0.0.1:{port}"));
}
