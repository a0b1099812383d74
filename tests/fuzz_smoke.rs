//! A stable-Rust stand-in for the cargo-fuzz targets in `fuzz/`: the bodies of `footer_parse`,
//! `header_parse` and `image_check`, copied here unchanged in meaning, run over 20,000
//! deterministic inputs. Most are mutations of valid images written by the crate's own writer
//! and of the committed malformed corpus; the rest are random bytes. This keeps the fuzz targets'
//! assertions exercised on every `cargo test`, where nightly and libFuzzer are not available.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use uuid::Uuid;
use vhdsync::image::{
    Chain, CreateOptions, ParentLink, VhdLayer, VhdWriter, check::check_bytes, create,
    locate_footer,
};
use vhdsync::vhd::batmap::BatmapHeader;
use vhdsync::vhd::{Bat, DiskType, DynamicHeader, Footer, VhdTimestamp, ones_complement_checksum};

const INPUTS: usize = 20_000;

// ---------------------------------------------------------------------------------------------
// The fuzz target bodies (keep in step with fuzz/fuzz_targets/*.rs).

/// `footer_parse`.
fn footer_parse(data: &[u8]) {
    let _ = locate_footer(data);
    footer_round_trip(data);
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

/// `header_parse`.
fn header_parse(data: &[u8]) {
    header_round_trip(data);
    if let Some(head) = data.get(..1024) {
        let mut sealed = head.to_vec();
        sealed[..8].copy_from_slice(b"cxsparse");
        let sum = ones_complement_checksum(&sealed, 36);
        sealed[36..40].copy_from_slice(&sum.to_be_bytes());
        header_round_trip(&sealed);
    }
    let entries = data
        .get(..4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let table = data.get(4..).unwrap_or_default();
    if let Ok(bat) = Bat::parse(table, entries, 1536) {
        assert_eq!(Bat::parse(&bat.encode(), entries, 1536).as_ref(), Ok(&bat));
    }
    if let Ok(Some(batmap)) = BatmapHeader::parse(data, 2048) {
        assert_eq!(
            BatmapHeader::parse(&batmap.encode(), 2048),
            Ok(Some(batmap))
        );
    }
}

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

/// `image_check`. Returns whether the image opened, for the summary line.
fn image_check(data: &[u8]) -> bool {
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
    let Ok(layer) = opened else { return false };
    let _ = layer.parent_locator_paths();
    let Ok(chain) = Chain::from_layers(vec![layer]) else {
        return true;
    };
    let end = chain.virtual_size().min(READ_CAP);
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
    true
}

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
    fixed.extend_from_slice(&Footer::new(DiskType::Fixed, 16 << 10, Uuid::from_u128(7)).encode());

    let mut seeds = vec![
        std::fs::read(base).unwrap(),
        std::fs::read(child).unwrap(),
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
    seeds
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
