//! Allocation caps (issue 8 §4): inputs that claim enormous sizes must fail fast in bounded
//! memory. A stream claiming 2^32 BAT entries or a 4 GiB block size, an XML-RPC (and JSON-RPC)
//! document nested 100,000 levels deep, and a 10 GiB JSON-RPC body claimed by Content-Length,
//! sent to the lab host and answered to the client. File-level caps (a VHD file's BAT and block
//! size) are in `tests/malformed.rs`.
//!
//! A counting global allocator records the largest single allocation and the peak of live
//! bytes over the whole process (the lab host answers on other threads), so the checks run in
//! one test, one after the other, and this binary holds nothing else.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;

use bytes::BytesMut;
use common::lab_pair::Host;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;
use uuid::Uuid;
use vhdsync::image::{Chain, CreateOptions, VhdWriter, create};
use vhdsync::stream::{ChainExport, StreamDecoder};
use vhdsync::vhd::{VhdTimestamp, ones_complement_checksum};
use vhdsync::xapi::HostUrl;
use vhdsync::xapi::client::XapiClient;
use vhdsync::xapi::rpc::{jsonrpc, xmlrpc};
use vhdsync::xapi::tls::Trust;

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    LARGEST.fetch_max(size, Ordering::Relaxed);
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; we only count sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: the caller upholds `alloc`'s contract, which we pass on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        grew(new_size);
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as for `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What a hostile input may cost on top of what was live before it: far below any claim.
const BOUND: usize = 8 << 20;
/// And how long it may take to be refused.
const FAST: Duration = Duration::from_secs(5);

/// Run `refuse` (which must return the refusal's text) and check it was fast and bounded.
async fn bounded<F: std::future::Future<Output = String>>(what: &str, refuse: F) -> String {
    let live = LIVE.load(Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    let started = Instant::now();
    let message = tokio::time::timeout(FAST, refuse)
        .await
        .unwrap_or_else(|_| panic!("{what}: not refused within {FAST:?}"));
    let (largest, peak) = (
        LARGEST.load(Ordering::Relaxed),
        PEAK.load(Ordering::Relaxed) - live,
    );
    println!(
        "{what}: refused in {:?}, largest allocation {largest} B, peak {peak} B: {message}",
        started.elapsed()
    );
    assert!(largest < BOUND, "{what}: allocated {largest} bytes at once");
    assert!(peak < BOUND, "{what}: {peak} bytes live at the peak");
    message
}

/// A valid stream of a 4 MiB dynamic disk with one block written.
fn valid_stream() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.vhd");
    create(&path, &CreateOptions::dynamic(4 << 20)).unwrap();
    let mut writer = VhdWriter::open(&path).unwrap();
    writer.write_sectors(0, &[0x5A; 4096]).unwrap();
    writer.flush().unwrap();
    let export = ChainExport::new(
        Chain::open(&path).unwrap(),
        None,
        Uuid::from_u128(1),
        VhdTimestamp(0),
    )
    .unwrap();
    export.frames().flat_map(|f| f.unwrap().to_vec()).collect()
}

/// The stream with the dynamic header's big-endian u32 at `field` (relative to the header)
/// set to `value`, the header checksum made valid again so the claim itself is judged.
fn with_header_field(stream: &[u8], field: usize, value: u32) -> Vec<u8> {
    let mut bytes = stream.to_vec();
    let header = &mut bytes[512..1536];
    header[field..field + 4].copy_from_slice(&value.to_be_bytes());
    let sum = ones_complement_checksum(header, 36);
    header[36..40].copy_from_slice(&sum.to_be_bytes());
    bytes
}

fn decode_all(bytes: &[u8]) -> Result<usize, String> {
    let mut decoder = StreamDecoder::new();
    let mut buf = BytesMut::from(bytes);
    let mut events = 0;
    loop {
        match decoder.decode_eof(&mut buf) {
            Ok(Some(_)) => events += 1,
            Ok(None) => return Ok(events),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn nested_xml(depth: usize) -> String {
    let mut doc = String::from("<?xml version=\"1.0\"?><methodResponse><params><param>");
    doc.push_str(&"<value><array><data>".repeat(depth));
    doc.push_str(&"</data></array></value>".repeat(depth));
    doc.push_str("</param></params></methodResponse>");
    doc
}

/// Send `head` then `body` on a raw connection and return the status line of the answer
/// (empty if the host closed without one).
async fn raw_exchange(addr: &str, head: &str, body: &[u8]) -> String {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    let _ = socket.write_all(body).await;
    let mut answer = vec![0u8; 4096];
    let n = socket.read(&mut answer).await.unwrap_or(0);
    String::from_utf8_lossy(&answer[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_claims_fail_fast_in_bounded_memory() {
    let stream = valid_stream();
    assert!(decode_all(&stream).is_ok(), "the unmodified stream decodes");

    // A stream claiming 2^32 - 1 BAT entries (the field's maximum): a 16 GiB table.
    let claim = with_header_field(&stream, 28, u32::MAX);
    let message = bounded("stream with 2^32 BAT entries", async {
        decode_all(&claim).expect_err("refused")
    })
    .await;
    assert!(
        message.contains("4294967295") || message.contains("entries"),
        "{message}"
    );

    // A 4 GiB block size: 0xFFFFFFFF, the nearest the field holds, and 2 GiB, a power of two.
    for (what, size) in [
        ("stream with a 4 GiB block size", u32::MAX),
        ("stream with a 2 GiB block size", 1 << 31),
    ] {
        let claim = with_header_field(&stream, 32, size);
        let message = bounded(what, async { decode_all(&claim).expect_err("refused") }).await;
        assert!(message.contains("block"), "{what}: {message}");
    }

    // XML-RPC nested 100,000 levels deep: refused by depth, not by a stack overflow.
    let deep = nested_xml(100_000);
    bounded("XML-RPC nested 100,000 deep", async {
        assert!(xmlrpc::decode_value(&deep).is_err());
        xmlrpc::decode_response(deep.as_bytes())
            .expect_err("refused")
            .to_string()
    })
    .await;
    let deep_json = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    bounded("JSON-RPC nested 100,000 deep", async {
        jsonrpc::decode_response(deep_json.as_bytes())
            .expect_err("refused")
            .to_string()
    })
    .await;

    // A JSON-RPC request to the lab host claiming a 10 GiB body (one JSON string): refused
    // from the header, and the host goes on serving.
    let lab = Host::start(&[]).await;
    let server = &lab.server;
    let addr = server.base_url().trim_start_matches("http://").to_owned();
    let ten_gib: u64 = 10 << 30;
    let head = format!(
        "POST /jsonrpc HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {ten_gib}\r\n\r\n"
    );
    let status = bounded("a 10 GiB JSON-RPC body sent to the lab host", async {
        raw_exchange(&addr, &head, b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"").await
    })
    .await;
    assert!(
        status.starts_with("HTTP/1.1 413") || status.starts_with("HTTP/1.1 400"),
        "refused with a status: {status:?}"
    );
    let url = server.base_url().replacen("://", "://root:lab@", 1);
    XapiClient::connect(HostUrl::parse(&url).unwrap(), &Trust::Insecure, None)
        .await
        .expect("the lab host still serves");

    // A host answering the client's login with a 10 GiB JSON string claim.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = vec![0u8; 64 << 10];
                let _ = socket.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                     Content-Length: {ten_gib}\r\n\r\n{{\"jsonrpc\":\"2.0\",\"id\":0,\"result\":\""
                );
                let _ = socket.write_all(head.as_bytes()).await;
                // Then trickle, as a host that really had 10 GiB to send would.
                for _ in 0..1000 {
                    if socket.write_all(&[b'a'; 4096]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }
    });
    let message = bounded("a 10 GiB JSON-RPC answer to the client", async {
        XapiClient::connect(
            HostUrl::parse(&format!("http://root:pw@{fake}")).unwrap(),
            &Trust::Insecure,
            None,
        )
        .await
        .expect_err("refused")
        .to_string()
    })
    .await;
    assert!(
        message.contains(&fake.to_string()),
        "names the host: {message}"
    );
}

/// A creating call or a uuid lookup answered with something other than a string is a
/// protocol error naming the host and the method, not an empty reference used later.
#[tokio::test]
async fn an_answer_of_the_wrong_type_names_the_host_and_the_method() {
    let host = Host::start_with_password(&[("web01", &[1 << 20])], "pw").await;
    let vms = host.call("VM.get_all", vec![]).await;
    let vm = vms.as_array().unwrap()[0].clone();
    let uuid = host
        .client
        .call_for_string("VM.get_uuid", vec![vm])
        .await
        .unwrap();
    assert_eq!(uuid.len(), 36, "a uuid: {uuid}");

    let message = host
        .client
        .call_for_string("VM.get_all", vec![])
        .await
        .expect_err("a list is not a string")
        .to_string();
    assert!(
        message.contains(&host.client.host())
            && message.contains("VM.get_all")
            && message.contains("expected a string"),
        "{message}"
    );
}
