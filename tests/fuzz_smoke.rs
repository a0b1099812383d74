//! A stable-Rust stand-in for the cargo-fuzz targets in `fuzz/`: the target bodies themselves
//! (`fuzz/bodies.rs`, included here) run over deterministic inputs. Most are mutations of
//! valid inputs (images written by the crate's own writer and the committed malformed corpus,
//! encoded streams, RPC documents, a job file); the rest are random bytes. This keeps the fuzz
//! targets' assertions exercised on every `cargo test`, where nightly and libFuzzer are not
//! available.

#[path = "../fuzz/bodies.rs"]
mod bodies;

use std::collections::BTreeMap;
use std::path::Path;

use bodies::{
    change_map, footer_parse, header_parse, image_check, job_parse, jsonrpc_decode,
    nbd_server_replies, seed_frames, stream_decode, xmlrpc_decode,
};
use uuid::Uuid;
use vhdsync::image::{Chain, CreateOptions, ParentLink, VhdWriter, create};
use vhdsync::stream::ChainExport;
use vhdsync::vhd::{DiskType, Footer, VhdTimestamp, ones_complement_checksum};

const INPUTS: usize = 20_000;

// ---------------------------------------------------------------------------------------------
// Inputs.

/// xorshift64*: deterministic, so a failing input is reproduced by its index.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Valid images from the crate's writer (dynamic with partial blocks, differencing with
/// locators), a fixed disk from the encoder, and every committed malformed fixture.
fn seeds() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    let mut options = CreateOptions::dynamic(48 << 10);
    options.block_size = 4096;
    create(&base, &options).unwrap();
    let mut writer = VhdWriter::open(&base).unwrap();
    writer.write_sectors(0, &[0xA5; 4096]).unwrap();
    writer
        .write_sectors(2 * 4096 + 1536, &[0x5A; 1024])
        .unwrap();
    writer.flush().unwrap();
    let child = dir.path().join("child.vhd");
    let mut child_options = CreateOptions::differencing(
        48 << 10,
        ParentLink {
            uuid: options.uuid,
            timestamp: VhdTimestamp(0),
            relative_path: "base.vhd".into(),
        },
    );
    child_options.block_size = 4096;
    create(&child, &child_options).unwrap();
    let mut writer = VhdWriter::open(&child).unwrap();
    writer.write_sectors(4096 + 512, &[0x77; 512]).unwrap();
    writer.flush().unwrap();

    let mut fixed = vec![0x11u8; 16 << 10];
    fixed.extend_from_slice(
        &Footer::new(
            DiskType::Fixed,
            16 << 10,
            Uuid::from_u128(7),
            VhdTimestamp(0),
        )
        .encode(),
    );

    let mut seeds = vec![
        std::fs::read(&base).unwrap(),
        std::fs::read(&child).unwrap(),
        fixed,
    ];
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/malformed");
    let mut files: Vec<_> = std::fs::read_dir(corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "vhd"))
        .collect();
    files.sort();
    seeds.extend(files.into_iter().map(|p| std::fs::read(p).unwrap()));
    // Full and delta exports of the same chain, for the stream decoder.
    for (leaf, parent) in [(&child, None), (&child, Some(&base))] {
        let parent = parent.map(|p| Chain::open(p).unwrap());
        let export = ChainExport::new(
            Chain::open(leaf).unwrap(),
            parent.as_ref(),
            Uuid::from_u128(9),
            VhdTimestamp(0),
        )
        .unwrap();
        seeds.push(export.frames().flat_map(|f| f.unwrap().to_vec()).collect());
    }
    seeds
}

/// Well-formed documents for the text parsers: XML-RPC calls, responses and faults,
/// JSON-RPC requests and responses, and a complete job file.
fn text_seeds() -> Vec<Vec<u8>> {
    let vm = "3b2c5d6e-7f80-4912-a3b4-c5d6e7f80912";
    let sr = "6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    [
        "<?xml version=\"1.0\"?><methodCall><methodName>VM.get_record</methodName><params>\
         <param><value><string>OpaqueRef:1</string></value></param><param><value><struct>\
         <member><name>a</name><value><array><data><value><i4>7</i4></value><value>\
         <boolean>1</boolean></value><value><double>1.5</double></value></data></array>\
         </value></member></struct></value></param></params></methodCall>",
        "<methodResponse><params><param><value><struct><member><name>Status</name><value>\
         Success</value></member><member><name>Value</name><value>x</value></member>\
         </struct></value></param></params></methodResponse>",
        "<methodResponse><params><param><value><struct><member><name>Status</name><value>\
         Failure</value></member><member><name>ErrorDescription</name><value><array><data>\
         <value>SR_FULL</value><value>1</value></data></array></value></member></struct>\
         </value></param></params></methodResponse>",
        r#"{"jsonrpc":"2.0","id":1,"method":"VM.get_all_records","params":["OpaqueRef:s",{"k":[1,2.5,true,null]}]}"#,
        r#"{"jsonrpc":"2.0","id":"a","result":{"OpaqueRef:1":{"uuid":"u","VBDs":[]}}}"#,
        r#"{"jsonrpc":"2.0","id":3,"error":{"code":1,"message":"SESSION_INVALID","data":["OpaqueRef:x"]}}"#,
    ]
    .into_iter()
    .map(|text| text.as_bytes().to_vec())
    .chain([format!(
        "name = \"nightly\"\nsource = \"https://root@10.0.0.1\"\n\
         target = \"https://root@10.0.0.2\"\ntarget_sr = \"{sr}\"\nvms = [\"{vm}\"]\n\
         retention = 3\nfull_interval = 7\nconcurrency = 2\nstate_dir = \"/var/lib/vhdsync\"\n\
         [tls]\nsource_fingerprint = \"sha256:{}\"\ninsecure = false\n",
        "ab".repeat(32)
    )
    .into_bytes()])
    .collect()
}

/// Values on the edges of sizes, offsets and counts.
const INTERESTING: [u32; 9] = [
    0,
    1,
    511,
    512,
    0x0020_0000,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFE,
    u32::MAX,
];

/// One to four mutations of a seed, then (half the time) checksums made valid again so that
/// the damage reaches the field checks and the layout arithmetic.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = bytes.len();
        match rng.below(6) {
            0 if len > 0 => {
                let at = rng.below(len);
                bytes[at] ^= 1 + rng.below(255) as u8;
            }
            // A big-endian word in the metadata (first 3 KiB or the last sector).
            1 | 2 if len >= 4 => {
                let at = if rng.below(4) == 0 {
                    len.saturating_sub(512) + rng.below(128) * 4
                } else {
                    rng.below(768) * 4
                };
                let word = match rng.below(3) {
                    0 => rng.next() as u32,
                    _ => INTERESTING[rng.below(INTERESTING.len())],
                };
                if at + 4 <= len {
                    bytes[at..at + 4].copy_from_slice(&word.to_be_bytes());
                }
            }
            3 => bytes.truncate(rng.below(len + 1)),
            4 => {
                let extra = rng.below(1024);
                bytes.extend(rng.bytes(extra));
            }
            _ if len > 0 => {
                let at = rng.below(len);
                let run = rng.below(64).min(len - at);
                bytes[at..at + run].fill(if rng.below(2) == 0 { 0 } else { 0xFF });
            }
            _ => {}
        }
    }
    if rng.below(2) == 0 {
        reseal(&mut bytes);
    }
    bytes
}

/// Recompute the checksums of both footers and of the header where they fit.
fn reseal(bytes: &mut [u8]) {
    let len = bytes.len();
    let places = [
        (0, 512, 64),
        (len.saturating_sub(512), 512, 64),
        (512, 1024, 36),
    ];
    for (at, size, checksum_at) in places {
        if at + size <= len {
            let sum = ones_complement_checksum(&bytes[at..at + size], checksum_at);
            bytes[at + checksum_at..at + checksum_at + 4].copy_from_slice(&sum.to_be_bytes());
        }
    }
}

/// The message of a caught panic, with digits blanked so that one defect found through many
/// inputs is counted as one.
fn defect(payload: &(dyn std::any::Any + Send)) -> String {
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("non-text panic");
    message
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect()
}

/// The stream, RPC and job file bodies over mutations of their seeds (text mutations keep to
/// the seed's length scale: bytes flipped, cut, duplicated, or a digit run replaced by a big
/// number).
#[test]
fn stream_rpc_and_job_bodies_survive_mutated_inputs() {
    let streams: Vec<Vec<u8>> = seeds().into_iter().rev().take(2).collect();
    let texts = text_seeds();
    let mut rng = Rng(0x5EED_F022_5A1E_0002);
    let mut accepted = [0usize; 4];
    for n in 0..INPUTS / 4 {
        // Each stream is decoded four times, one byte at a time among them: fewer of those.
        if n % 10 == 0 {
            let pick = rng.below(streams.len());
            let stream = mutate(&mut rng, &streams[pick]);
            accepted[0] += usize::from(stream_decode(&stream));
        }
        let pick = rng.below(texts.len());
        let text = mutate_text(&mut rng, &texts[pick]);
        accepted[1] += usize::from(xmlrpc_decode(&text));
        accepted[2] += usize::from(jsonrpc_decode(&text));
        accepted[3] += usize::from(job_parse(&text));
    }
    println!(
        "fuzz smoke: {} streams and {} texts; accepted: {} streams, {} XML-RPC, {} JSON-RPC, {} jobs",
        INPUTS / 40,
        INPUTS / 4,
        accepted[0],
        accepted[1],
        accepted[2],
        accepted[3]
    );
    // Unmutated seeds are accepted, so the bodies' round-trip assertions are reached.
    for seed in &streams {
        assert!(stream_decode(seed), "a valid export decodes");
    }
    assert!(texts.iter().filter(|t| xmlrpc_decode(t)).count() >= 3);
    assert!(texts.iter().filter(|t| jsonrpc_decode(t)).count() >= 3);
    assert!(job_parse(texts.last().unwrap()), "the seed job parses");
    assert!(accepted.iter().all(|&a| a > 0), "{accepted:?}");
}

/// The seed file body over mutations of a real seed file (a few frames of compressible and
/// random data), and over random bytes behind a valid file header.
#[test]
fn seed_frames_body_survives_mutated_files() {
    use vhdsync::replicate::seed_file::SeedEncoder;
    let mut rng = Rng(0x5EED_F022_5A1E_0003);
    let mut encoder = SeedEncoder::new(1, 1 << 16).unwrap();
    let mut file = encoder.header().to_vec();
    for frame in [vec![0u8; 3000], rng.bytes(2000), b"vhdsync".repeat(100)] {
        file.extend_from_slice(&encoder.frame(&frame).unwrap());
    }
    file.extend_from_slice(&encoder.end().0);
    assert!(seed_frames(&file), "a valid seed file decodes");
    let mut accepted = 0;
    for n in 0..INPUTS / 20 {
        let input = if n % 4 == 0 {
            let len = rng.below(256);
            rng.bytes(len)
        } else {
            mutate(&mut rng, &file)
        };
        accepted += usize::from(seed_frames(&input));
    }
    println!(
        "fuzz smoke: {} seed files, {accepted} accepted",
        INPUTS / 20
    );
}

/// Whole NBD sessions as a server sends them, each behind the fuzz body's shape byte (bit 0:
/// TLS, bit 1: probe): `NBD_OPT_GO` with block sizes and four reads answered out of order
/// (one failed), the same over STARTTLS, the `NBD_OPT_EXPORT_NAME` fallback with its zeroes,
/// and a probe.
fn nbd_seeds() -> Vec<Vec<u8>> {
    use vhdsync::nbd::server::{
        encode_export_name_reply, encode_greeting, encode_info_block_size, encode_info_export,
        encode_option_reply, encode_simple_reply,
    };
    use vhdsync::nbd::wire::{OPT_ABORT, OPT_GO, OPT_INFO, OPT_STARTTLS};
    use vhdsync::nbd::{BlockSizes, ReplyCode, ServerError};

    let size = 1u64 << 20;
    let sizes = BlockSizes {
        minimum: 512,
        preferred: 4096,
        maximum: 1 << 20,
    };
    let answers = |option| {
        [
            encode_option_reply(option, ReplyCode::Info, &encode_info_export(size, 1)),
            encode_option_reply(option, ReplyCode::Info, &encode_info_block_size(sizes)),
            encode_option_reply(option, ReplyCode::Ack, &[]),
        ]
        .concat()
    };
    // The body reads 4 KiB at 0, 4, 8 and 12 KiB, with handles 1 to 4.
    let reads = [
        [encode_simple_reply(3, None).to_vec(), vec![0x33; 4096]].concat(),
        encode_simple_reply(2, Some(ServerError::EIO)).to_vec(),
        [encode_simple_reply(1, None).to_vec(), vec![0x11; 4096]].concat(),
        [encode_simple_reply(4, None).to_vec(), vec![0x44; 4096]].concat(),
    ]
    .concat();
    let greeting = encode_greeting(3).to_vec();
    vec![
        [vec![0], greeting.clone(), answers(OPT_GO), reads.clone()].concat(),
        [
            vec![1],
            greeting.clone(),
            encode_option_reply(OPT_STARTTLS, ReplyCode::Ack, &[]),
            answers(OPT_GO),
            reads.clone(),
        ]
        .concat(),
        [
            vec![0],
            encode_greeting(1).to_vec(),
            encode_option_reply(OPT_GO, ReplyCode::Unsupported, b"old server"),
            encode_export_name_reply(size, 1, true),
            reads,
        ]
        .concat(),
        [
            vec![2],
            greeting,
            answers(OPT_INFO),
            encode_option_reply(OPT_ABORT, ReplyCode::Ack, &[]),
        ]
        .concat(),
    ]
}

/// The NBD body over mutations of whole sessions, and over random bytes behind a shape byte.
#[test]
fn nbd_body_survives_mutated_sessions() {
    let seeds = nbd_seeds();
    for seed in &seeds {
        assert!(nbd_server_replies(seed), "a valid session completes");
    }
    let mut rng = Rng(0x5EED_F022_5A1E_0004);
    let mut completed = 0;
    for n in 0..INPUTS / 20 {
        let input = if n % 5 == 0 {
            let len = rng.below(300);
            rng.bytes(len)
        } else {
            let pick = rng.below(seeds.len());
            mutate(&mut rng, &seeds[pick])
        };
        completed += usize::from(nbd_server_replies(&input));
    }
    println!(
        "fuzz smoke: {} NBD sessions, {completed} reached the export",
        INPUTS / 20
    );
    assert!(completed > 0);
}

fn mutate_text(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = bytes.len();
        match rng.below(5) {
            0 if len > 0 => {
                let at = rng.below(len);
                const PUNCTUATION: &[u8] = b"<>{}[]\"=,:\n/0123456789.-e aA";
                bytes[at] = PUNCTUATION[rng.below(PUNCTUATION.len())];
            }
            1 => bytes.truncate(rng.below(len + 1)),
            2 if len > 0 => {
                let at = rng.below(len);
                let run = rng.below(32).min(len - at);
                let piece = bytes[at..at + run].to_vec();
                bytes.splice(at..at, piece);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let number =
                    ["99999999999999999999", "-1", "4294967296", "1e400", "0x10"][rng.below(5)];
                bytes.splice(at..at, number.bytes());
            }
            _ if len > 0 => {
                bytes.remove(rng.below(len));
            }
            _ => {}
        }
    }
    bytes
}

#[test]
fn fuzz_bodies_survive_random_and_mutated_inputs() {
    let seeds = seeds();
    let mut rng = Rng(0x5EED_F022_5A1E_0001);
    let mut opened = 0;
    // Every input runs even after a failure, so one known defect cannot hide the others.
    let mut defects: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for n in 0..INPUTS {
        let input = if n % 8 == 0 {
            let len = rng.below(4096);
            rng.bytes(len)
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, seed)
        };
        let run = std::panic::catch_unwind(|| {
            footer_parse(&input);
            header_parse(&input);
            image_check(&input)
        });
        match run {
            Ok(true) => opened += 1,
            Ok(false) => {}
            Err(payload) => defects.entry(defect(&*payload)).or_insert((n, 0)).1 += 1,
        }
    }
    std::panic::set_hook(hook);
    println!("fuzz smoke: {INPUTS} inputs through 3 targets, {opened} opened as images");
    for (message, (first, count)) in &defects {
        println!("  {count} inputs (first: input {first}) failed: {message}");
    }
    assert!(defects.is_empty(), "{} distinct failures", defects.len());
    assert!(
        opened > INPUTS / 10,
        "mutations should mostly keep images openable"
    );
}

#[test]
fn change_maps_from_random_and_mutated_bitmaps_never_panic() {
    use base64::Engine as _;
    let mut rng = Rng(0x5EED_CB70_0000_0001);
    let mut accepted = 0;
    for n in 0..2000 {
        let extents = rng.below(600) as u16;
        let mut input = extents.to_be_bytes().to_vec();
        if n % 4 == 0 {
            let len = rng.below(200);
            input.extend(rng.bytes(len));
        } else {
            // A well-formed bitmap for the size, then mutated as text.
            let bytes = rng.bytes(usize::from(extents).div_ceil(32).max(1));
            let text = base64::engine::general_purpose::STANDARD.encode(bytes);
            input.extend(mutate(&mut rng, text.as_bytes()));
        }
        accepted += usize::from(change_map(&input));
    }
    println!("fuzz smoke: 2000 change maps, {accepted} accepted");
}
