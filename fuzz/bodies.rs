//! The bodies of the fuzz targets, one function per target. The cargo-fuzz binaries in
//! `fuzz_targets/` and the stable `tests/fuzz_smoke.rs` both include this file (with
//! `#[path]`), so the assertions libFuzzer checks are exactly the ones `cargo test` checks.
//! Every body must never panic on any input; the assertions state what must hold besides.

// Each fuzz binary calls one of these bodies.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;
use vhdsync::image::{Chain, Damage, ImageErrorKind, VhdLayer, check::check_bytes, locate_footer};
use vhdsync::nbd::ExportInfo;
use vhdsync::nbd::handshake::{ClientHandshake, Goal, HandshakeEvent};
use vhdsync::nbd::transmission::{Reply, Transmission};
use vhdsync::nbd::wire::{Decoded, MAX_OPTION_REPLY_PAYLOAD, OPTION_REPLY_HEADER_LEN};
use vhdsync::replicate::job::Job;
use vhdsync::replicate::seed_file::{
    SeedDecoder, SeedEncoder, SeedEvent, SeedFileError, file_header,
};
use vhdsync::stream::{StreamDecoder, StreamEvent};
use vhdsync::vhd::bat::{BlockLayout, Extent};
use vhdsync::vhd::batmap::BatmapHeader;
use vhdsync::vhd::{Bat, DynamicHeader, Footer, ones_complement_checksum};
use vhdsync::xapi::rpc::jsonrpc;
use vhdsync::xapi::rpc::xmlrpc::{self, IntEncoding};

/// `footer_parse`: footer parsing and location (end footer, 511-byte footers, fallback to the
/// copy at offset 0); a footer that parses re-encodes to bytes that parse back to it.
pub fn footer_parse(data: &[u8]) {
    let _ = locate_footer(data);
    footer_round_trip(data);
    // Also with a valid cookie and checksum, so that inputs reach the field checks instead of
    // nearly all stopping at the checksum.
    if let Some(head) = data.get(..512) {
        let mut sealed = head.to_vec();
        sealed[..8].copy_from_slice(b"conectix");
        let sum = ones_complement_checksum(&sealed, 64);
        sealed[64..68].copy_from_slice(&sum.to_be_bytes());
        footer_round_trip(&sealed);
    }
}

fn footer_round_trip(bytes: &[u8]) {
    if let Ok((footer, _)) = Footer::parse(bytes, 0) {
        let (again, _) = Footer::parse(&footer.encode(), 0).expect("an encoded footer parses");
        assert_eq!(
            Footer {
                checksum: again.checksum,
                ..footer
            },
            again
        );
    }
}

/// `header_parse`: the dynamic header, parent locator, BAT and batmap parsers, none of which
/// may allocate from an unchecked count; whatever parses round-trips.
pub fn header_parse(data: &[u8]) {
    header_round_trip(data);
    // Also with a valid cookie and checksum, so that inputs reach the field checks.
    if let Some(head) = data.get(..1024) {
        let mut sealed = head.to_vec();
        sealed[..8].copy_from_slice(b"cxsparse");
        let sum = ones_complement_checksum(&sealed, 36);
        sealed[36..40].copy_from_slice(&sum.to_be_bytes());
        header_round_trip(&sealed);
    }
    // The first four bytes as the entry count: up to u32::MAX, which must fail before sizing.
    let entries = data
        .get(..4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let table = data.get(4..).unwrap_or_default();
    if let Ok(bat) = Bat::parse(table, entries, 1536) {
        assert_eq!(Bat::parse(&bat.encode(), entries, 1536).as_ref(), Ok(&bat));
        bat_layout(&bat, data);
    }
    if let Ok(Some(batmap)) = BatmapHeader::parse(data, 2048) {
        assert_eq!(
            BatmapHeader::parse(&batmap.encode(), 2048),
            Ok(Some(batmap))
        );
    }
}

/// The BAT's layout check, with block size, disk size and file length taken from the input
/// (its bytes 4..28): bounded findings, each naming an entry of the table.
fn bat_layout(bat: &Bat, data: &[u8]) {
    let word = |at: usize| {
        data.get(at..at + 8)
            .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()))
    };
    let layout = BlockLayout {
        table_offset: 1536,
        block_size: 512 << (word(4) % 13),
        bitmap_size: 512,
        current_size: word(12) % (1 << 41),
        file_len: word(20) % (1 << 42),
    };
    let metadata = [
        Extent {
            start: 0,
            end: 512,
            what: "footer copy".into(),
        },
        Extent {
            start: 512,
            end: 1536,
            what: "dynamic header".into(),
        },
        Extent {
            start: 1536,
            end: 1536 + 4 * u64::from(bat.len()),
            what: "BAT".into(),
        },
    ];
    let findings = bat.check_layout(&layout, &metadata, 16);
    assert!(findings.len() <= 16);
    for f in &findings {
        assert!(
            (1536..1536 + 4 * u64::from(bat.len())).contains(&f.offset),
            "{f}"
        );
    }
}

/// Parse, re-encode and re-parse a header; decode every locator with the input as payload.
fn header_round_trip(bytes: &[u8]) {
    let Ok(header) = DynamicHeader::parse(bytes, 512) else {
        return;
    };
    let again = DynamicHeader::parse(&header.encode(), 512).expect("an encoded header parses");
    assert_eq!(
        DynamicHeader {
            checksum: again.checksum,
            ..header.clone()
        },
        again
    );
    for (i, locator) in header.parent_locators.iter().enumerate() {
        let _ = locator.reserved_bytes(i as u8, 1088);
        let _ = locator.decode_path(i as u8, bytes, 0);
    }
}

/// `image_check`: everything that looks at a whole VHD file (`check_bytes`,
/// `VhdLayer::from_bytes`, and reading the content of what opens, capped so an iteration stays
/// fast). The two views agree: what opens can be checked, and what is refused cannot check
/// clean. Returns whether the image opened.
pub fn image_check(data: &[u8]) -> bool {
    /// Read at most this much virtual disk per input: a corrupt footer may claim 2040 GiB.
    const READ_CAP: u64 = 16 << 20;
    let checked = check_bytes(data);
    let opened = VhdLayer::from_bytes(Path::new("fuzz.vhd"), Bytes::copy_from_slice(data));
    match &opened {
        Ok(_) => assert!(checked.is_ok(), "opens but check cannot read it"),
        Err(e) => assert!(
            !matches!(&checked, Ok(report) if report.is_clean()),
            "open refuses it ({e}) but check finds it clean"
        ),
    }
    // Damage refused on open is a problem `check` reports at the same byte.
    if let Err(e) = &opened
        && let ImageErrorKind::Damaged { finding, .. } = &e.kind
    {
        assert!(
            matches!(&checked, Ok(r) if r.problems.iter().any(|p| p.offset == finding.offset)),
            "open refuses it ({finding}) but check does not report that byte"
        );
    }
    // Read anyway, as `--force` does: still no panic and no read outside the file.
    let tolerated = VhdLayer::from_bytes_with(
        Path::new("fuzz.vhd"),
        Bytes::copy_from_slice(data),
        Damage::Tolerate,
    );
    if let Ok(layer) = tolerated {
        read_layer(layer, READ_CAP);
    }
    let Ok(layer) = opened else { return false };
    read_layer(layer, READ_CAP);
    true
}

/// Read a layer's whole disk (up to `cap` bytes) through a one-layer chain, by bytes and by
/// blocks.
fn read_layer(layer: VhdLayer, cap: u64) {
    let _ = layer.parent_locator_paths();
    let Ok(chain) = Chain::from_layers(vec![layer]) else {
        return;
    };
    let end = chain.virtual_size().min(cap);
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0;
    while at < end {
        let n = (end - at).min(buf.len() as u64) as usize;
        chain.read_at(at, &mut buf[..n]);
        at += n as u64;
    }
    for index in 0..end.div_ceil(u64::from(chain.block_size())) as u32 {
        let _ = chain.block_data(index);
    }
}

/// The events of `data` fed `chunk` bytes at a time, and whether the stream ended cleanly.
fn decode_stream(data: &[u8], chunk: usize) -> (Vec<StreamEvent>, bool) {
    let mut decoder = StreamDecoder::new();
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(_) => return (events, false),
            }
        }
    }
    loop {
        match decoder.decode_eof(&mut buf) {
            Ok(Some(event)) => events.push(event),
            Ok(None) => break,
            Err(_) => return (events, false),
        }
    }
    let ended = matches!(events.last(), Some(StreamEvent::End(_)));
    assert!(ended, "a clean EOF comes only after the final footer");
    assert_eq!(decoder.total_len(), Some(data.len() as u64));
    (events, true)
}

/// `stream_decode`: the VHD stream decoder, whole and in small chunks, sees the same events
/// however the input is split, and ends every input with the final footer or an error.
/// Returns whether the stream decoded cleanly.
pub fn stream_decode(data: &[u8]) -> bool {
    let (whole, whole_ok) = decode_stream(data, data.len().max(1));
    for chunk in [1, 511, 4096] {
        let (split, split_ok) = decode_stream(data, chunk);
        assert_eq!(split_ok, whole_ok, "chunk size {chunk} changed the outcome");
        if whole_ok {
            assert_eq!(split, whole, "chunk size {chunk} changed the events");
        }
    }
    whole_ok
}

/// `xmlrpc_decode`: every XML-RPC decoder; whatever one accepts re-encodes into a document it
/// accepts again, encoded identically. Returns whether any decoder accepted the input.
pub fn xmlrpc_decode(data: &[u8]) -> bool {
    let mut accepted = false;
    if let Ok(call) = xmlrpc::decode_call(data) {
        accepted = true;
        let encoded = xmlrpc::encode_call(&call, IntEncoding::Typed);
        let again = xmlrpc::decode_call(&encoded).expect("an encoded call decodes");
        assert_eq!(xmlrpc::encode_call(&again, IntEncoding::Typed), encoded);
    }
    if let Ok(response) = xmlrpc::decode_response(data) {
        accepted = true;
        let encoded = xmlrpc::encode_response(&response, IntEncoding::Typed);
        let again = xmlrpc::decode_response(&encoded).expect("an encoded response decodes");
        assert_eq!(xmlrpc::encode_response(&again, IntEncoding::Typed), encoded);
    }
    if let Ok(value) = xmlrpc::decode_value(&String::from_utf8_lossy(data)) {
        accepted = true;
        let encoded = xmlrpc::encode_value(&value, IntEncoding::Typed);
        let again = xmlrpc::decode_value(&encoded).expect("an encoded value decodes");
        assert_eq!(xmlrpc::encode_value(&again, IntEncoding::Typed), encoded);
    }
    accepted
}

/// `jsonrpc_decode`: the JSON-RPC decoders; whatever they accept re-encodes into a message
/// they accept again. Returns whether either accepted the input.
pub fn jsonrpc_decode(data: &[u8]) -> bool {
    let mut accepted = false;
    if let Ok(request) = jsonrpc::decode_request(data) {
        accepted = true;
        let encoded = jsonrpc::encode_request(&request);
        let again = jsonrpc::decode_request(&encoded).expect("an encoded request decodes");
        assert_eq!(again.id, request.id);
        assert_eq!(again.call.method, request.call.method);
    }
    if let Ok(response) = jsonrpc::decode_response(data) {
        accepted = true;
        let encoded = jsonrpc::encode_response(&response);
        let again = jsonrpc::decode_response(&encoded).expect("an encoded response decodes");
        assert_eq!(again.id, response.id);
        assert_eq!(again.response.is_ok(), response.response.is_ok());
    }
    accepted
}

/// `job_parse`: the job file parser. A refusal names the file, and the line when it has one
/// within the text; an accepted job is self-consistent. Returns whether the job parsed.
pub fn job_parse(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    match Job::parse(text, Path::new("/etc/vhdsync/fuzz.toml")) {
        Ok(job) => {
            assert!(!job.vms.is_empty(), "a job without VMs parsed");
            assert!(!job.name.is_empty(), "a job without a name parsed");
            true
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.starts_with("/etc/vhdsync/fuzz.toml"),
                "the error names the file: {message}"
            );
            let lines = text.split('\n').count();
            assert!(e.line <= lines, "line {} of a {lines}-line file", e.line);
            false
        }
    }
}

fn seed_payload(data: &[u8], chunk: usize) -> Result<Vec<u8>, SeedFileError> {
    let mut decoder = SeedDecoder::new();
    let mut buf = BytesMut::new();
    let mut payload = Vec::new();
    let mut push = |event: SeedEvent| {
        if let SeedEvent::Frame { data, .. } = event {
            payload.extend_from_slice(&data);
        }
    };
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some(event) = decoder.decode(&mut buf)? {
            push(event);
        }
    }
    while let Some(event) = decoder.decode_eof(&mut buf)? {
        push(event);
    }
    Ok(payload)
}

fn seed_check(data: &[u8]) -> bool {
    let whole = seed_payload(data, data.len().max(1));
    for chunk in [1, 20, 4096] {
        let split = seed_payload(data, chunk);
        assert_eq!(
            split.is_ok(),
            whole.is_ok(),
            "chunk size {chunk} changed the verdict"
        );
        if let (Ok(a), Ok(b)) = (&split, &whole) {
            assert_eq!(a, b, "chunk size {chunk} changed the payload");
        }
    }
    let accepted = whole.is_ok();
    if let Ok(payload) = whole
        && !payload.is_empty()
    {
        let mut encoder = SeedEncoder::new(1, 1 << 16).expect("a valid level and frame size");
        let mut file = encoder.header().to_vec();
        for frame in payload.chunks(1 << 16) {
            file.extend_from_slice(&encoder.frame(frame).expect("a frame within the size"));
        }
        file.extend_from_slice(&encoder.end().0);
        assert_eq!(
            seed_payload(&file, 4096).expect("a re-encoded file decodes"),
            payload
        );
    }
    accepted
}

/// `seed_frames`: the seed file decoder, on the bytes as given and behind a valid file header
/// (so mutations reach the frames), whole and in small chunks. It never panics, gives the same
/// payload and verdict however the input is split, and a file it accepts re-encodes to one
/// that decodes to the same payload. Returns whether either form was accepted.
pub fn seed_frames(data: &[u8]) -> bool {
    let mut framed = file_header(1 << 16).to_vec();
    framed.extend_from_slice(data);
    seed_check(data) | seed_check(&framed)
}

/// What an NBD client made of a server's bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct NbdSession {
    /// The export, once the handshake reached transmission (or the probe its answer).
    pub export: Option<ExportInfo>,
    /// The data each read received, by handle, and whether it completed.
    pub reads: BTreeMap<u64, (Vec<u8>, bool)>,
    pub failed: Vec<u64>,
    /// The error that ended the session: a decoding error, or the server closing.
    pub error: String,
}

/// The largest `NeedMore` the handshake may ask for: one option reply with the largest
/// payload. Anything more would let a server make the client buffer at will.
const MAX_HANDSHAKE_NEED: usize = OPTION_REPLY_HEADER_LEN + MAX_OPTION_REPLY_PAYLOAD;

/// Run a client session over `server` (all the bytes the server sends), fed `chunk` bytes
/// at a time: the handshake, then up to four reads of the export, whose replies come from
/// the rest of the bytes. With TLS (taken as a no-op upgrade), bytes are fed only as the
/// codec asks for them, as they would come through TLS: none is buffered when the server
/// accepts STARTTLS.
pub fn nbd_session(server: &[u8], tls: bool, goal: Goal, chunk: usize) -> NbdSession {
    let mut session = NbdSession {
        export: None,
        reads: BTreeMap::new(),
        failed: Vec::new(),
        error: String::new(),
    };
    let mut handshake = ClientHandshake::new("/vdi?session_id=OpaqueRef:x", tls, goal).unwrap();
    let (mut buffered, mut fed) = (Vec::new(), 0);
    let mut feed = |buffered: &mut Vec<u8>, need: usize| {
        let take = if tls { chunk.min(need) } else { chunk };
        let take = take.min(server.len() - fed);
        buffered.extend_from_slice(&server[fed..fed + take]);
        fed += take;
        take > 0
    };
    let info = loop {
        let sent = handshake.take_output();
        assert!(sent.len() <= 8 << 10, "{} bytes sent at once", sent.len());
        match handshake.decode(&buffered) {
            Err(e) => {
                session.error = e.to_string();
                return session;
            }
            Ok(Decoded::NeedMore(n)) => {
                assert!(n > 0 && n <= MAX_HANDSHAKE_NEED, "needs {n}");
                if !feed(&mut buffered, n) {
                    match handshake.server_closed(buffered.len()) {
                        Ok(HandshakeEvent::Probed(info)) => session.export = Some(info),
                        Ok(other) => panic!("a close gave {other:?}"),
                        Err(e) => session.error = e.to_string(),
                    }
                    return session;
                }
            }
            Ok(Decoded::Done { value, consumed }) => {
                assert!(consumed > 0 && consumed <= buffered.len());
                buffered.drain(..consumed);
                match value {
                    HandshakeEvent::Continue => {}
                    HandshakeEvent::StartTls => handshake.tls_started().unwrap(),
                    HandshakeEvent::Probed(info) => {
                        session.export = Some(info);
                        return session;
                    }
                    HandshakeEvent::Ready(info) => break info,
                }
            }
        }
    };
    session.export = Some(info);
    let mut tx = Transmission::new(info, 16);
    let min = u64::from(info.min_block());
    let len = 4096u64
        .max(min)
        .min(u64::from(info.max_request()))
        .min(info.size)
        / min
        * min;
    let mut requested = BTreeMap::new();
    for i in 0..4 {
        if len > 0 && (i + 1) * len <= info.size {
            let (handle, _) = tx.encode_read(i * len, len as u32).expect("a valid read");
            requested.insert(handle, len as usize);
        }
    }
    loop {
        match tx.decode(&buffered) {
            Err(e) => {
                session.error = e.to_string();
                return session;
            }
            Ok(Decoded::NeedMore(n)) => {
                let due = tx.data_due().map_or(0, |d| d.remaining as usize);
                assert!(n > 0 && n <= due.max(16), "needs {n}");
                if !feed(&mut buffered, n) {
                    session.error = tx.server_closed(buffered.len()).to_string();
                    return session;
                }
            }
            Ok(Decoded::Done { value, consumed }) => {
                assert!(consumed <= buffered.len());
                match value {
                    Reply::Data {
                        handle,
                        at,
                        data,
                        complete,
                    } => {
                        assert!(data.end <= consumed, "data beyond what was consumed");
                        let (bytes, done) = session.reads.entry(handle).or_default();
                        assert!(!*done, "data after the read completed");
                        assert_eq!(bytes.len(), at as usize, "data out of place");
                        bytes.extend_from_slice(&buffered[data]);
                        assert!(bytes.len() <= requested[&handle], "more data than asked");
                        *done = complete;
                        assert_eq!(complete, bytes.len() == requested[&handle]);
                    }
                    Reply::Failed { handle, len, .. } => {
                        assert_eq!(len as usize, requested[&handle]);
                        session.failed.push(handle);
                    }
                }
                buffered.drain(..consumed);
            }
        }
    }
}

/// `nbd_server_replies`: arbitrary bytes as everything an NBD server sends to the client
/// codec (the first byte picks TLS and the goal). Never a panic, never a buffer request
/// beyond one option reply or one reply header, never data beyond what a read asked for,
/// and the same outcome however the bytes are split. Returns whether the handshake
/// completed.
pub fn nbd_server_replies(data: &[u8]) -> bool {
    let Some((&shape, server)) = data.split_first() else {
        return false;
    };
    let tls = shape & 1 != 0;
    let goal = if shape & 2 != 0 {
        Goal::Probe
    } else {
        Goal::Transmission
    };
    let whole = nbd_session(server, tls, goal, server.len().max(1));
    for chunk in [1, 7, 64] {
        assert_eq!(
            nbd_session(server, tls, goal, chunk),
            whole,
            "chunk size {chunk} changed the outcome"
        );
    }
    whole.export.is_some()
}

/// `change_map`: `VDI.list_changed_blocks`' answer (base64 text; the first two input bytes
/// pick the disk's size in 64 KiB extents) as a change map, then the VHD stream it lays out:
/// never a panic, the map never claims extents past the disk, and every read of every block
/// stays within the disk and the block.
pub fn change_map(data: &[u8]) -> bool {
    use vhdsync::stream::extents::{ChangeMap, EXTENT_SIZE, ExtentStream};
    use vhdsync::vhd::VhdTimestamp;
    let Some((size, text)) = data.split_first_chunk::<2>() else {
        return false;
    };
    let virtual_size = u64::from(u16::from_be_bytes(*size)) * EXTENT_SIZE / 4;
    let Ok(text) = std::str::from_utf8(text) else {
        return false;
    };
    let Ok(map) = ChangeMap::from_xapi(text, virtual_size) else {
        return false;
    };
    assert!(
        map.changed() <= map.extents(),
        "more extents changed than the disk has"
    );
    let Ok(stream) = ExtentStream::new(map, false, Default::default(), VhdTimestamp(0)) else {
        return false;
    };
    let block = u64::from(stream.block_size());
    for index in stream.blocks().collect::<Vec<_>>() {
        let mask = stream.changed_mask(index);
        assert_ne!(mask, 0, "block {index} carried without a changed extent");
        for read in stream.reads(index, mask) {
            assert!(read.disk_offset + u64::from(read.len) <= virtual_size);
            assert!(u64::from(read.block_offset) + u64::from(read.len) <= block);
        }
    }
    true
}
