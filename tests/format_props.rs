//! Properties of the sans-IO format core. Every structure encodes and parses back to the value
//! it came from; whatever parses from arbitrary bytes re-encodes to the same value; and no
//! parser, nor `check_bytes`, nor opening and reading a whole image, panics on arbitrary bytes
//! or on a valid image with a byte or a field corrupted.

use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use proptest::prelude::*;
use uuid::Uuid;
use vhdsync::image::{
    Chain, CreateOptions, ParentLink, VhdLayer, VhdWriter, check::check_bytes, create,
};
use vhdsync::vhd::batmap::BatmapHeader;
use vhdsync::vhd::footer::ChecksumStatus;
use vhdsync::vhd::{
    Bat, DiskType, DynamicHeader, Footer, Geometry, MAX_VIRTUAL_SIZE, ParentLocator, PlatformCode,
    VhdTimestamp, ones_complement_checksum,
};

// ---------------------------------------------------------------------------------------------
// Strategies for valid values.

fn sector_aligned() -> impl Strategy<Value = u64> {
    any::<u64>().prop_map(|x| x & !511)
}

/// Powers of two from 512 B to 2 MiB: everything the reader accepts.
fn block_size() -> impl Strategy<Value = u32> {
    (9u32..=21).prop_map(|shift| 1 << shift)
}

fn disk_type() -> impl Strategy<Value = DiskType> {
    prop_oneof![
        Just(DiskType::Fixed),
        Just(DiskType::Dynamic),
        Just(DiskType::Differencing),
    ]
}

fn footer() -> impl Strategy<Value = Footer> {
    let identity = (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<[u8; 4]>(),
        any::<u32>(),
        any::<u32>(),
    );
    let shape = (
        disk_type(),
        sector_aligned(),
        any::<bool>(),
        any::<u64>(),
        0..=MAX_VIRTUAL_SIZE,
        any::<u32>(),
        any::<[u8; 16]>(),
        any::<u8>(),
        any::<u8>(),
    );
    (identity, shape).prop_map(
        |(
            (features, format_version, timestamp, creator_app, creator_version, host_os),
            (disk_type, aligned, all_ones, original_size, current_size, chs, id, saved, hidden),
        )| Footer {
            features,
            format_version,
            // A fixed disk's unused offset is all ones; a sparse disk's points at its header.
            data_offset: if disk_type == DiskType::Fixed && all_ones {
                u64::MAX
            } else {
                aligned
            },
            timestamp: VhdTimestamp(timestamp),
            creator_app,
            creator_version,
            creator_host_os: host_os,
            original_size,
            current_size,
            geometry: Geometry::from_u32(chs),
            disk_type,
            checksum: 0,
            unique_id: Uuid::from_bytes(id),
            saved_state: saved,
            hidden,
        },
    )
}

/// Valid Unicode without NUL (which ends the field), at most the 256 UTF-16 units it holds.
fn parent_name() -> impl Strategy<Value = String> {
    let ch = any::<char>().prop_filter("NUL ends the name", |c| *c != '\0');
    prop::collection::vec(ch, 0..=256).prop_map(|chars| {
        let mut name = String::new();
        let mut units = 0;
        for c in chars {
            units += c.len_utf16();
            if units > 256 {
                break;
            }
            name.push(c);
        }
        name
    })
}

fn locator() -> impl Strategy<Value = ParentLocator> {
    let code = prop_oneof![
        Just(PlatformCode::MACX),
        Just(PlatformCode::W2RU),
        Just(PlatformCode::W2KU),
        any::<u32>().prop_map(PlatformCode),
    ];
    (code, any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>()).prop_map(
        |(code, data_space, data_length, reserved, data_offset)| ParentLocator {
            code,
            data_space,
            data_length,
            reserved,
            data_offset,
        },
    )
}

fn header() -> impl Strategy<Value = DynamicHeader> {
    (
        any::<u64>(),
        sector_aligned(),
        any::<u32>(),
        0..=(1u32 << 20),
        block_size(),
        any::<[u8; 16]>(),
        any::<u32>(),
        parent_name(),
        prop::collection::vec(locator(), 0..=8),
    )
        .prop_map(
            |(data_offset, table_offset, version, entries, block_size, parent, ts, name, locs)| {
                let mut header = DynamicHeader::new(table_offset, entries, block_size);
                header.data_offset = data_offset;
                header.header_version = version;
                header.parent_unique_id = Uuid::from_bytes(parent);
                header.parent_timestamp = VhdTimestamp(ts);
                header.parent_unicode_name = name;
                header.parent_locators[..locs.len()].copy_from_slice(&locs);
                header
            },
        )
}

fn batmap_header() -> impl Strategy<Value = BatmapHeader> {
    (sector_aligned(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
        |(map_offset, map_sectors, version, checksum)| BatmapHeader {
            map_offset,
            map_sectors,
            version,
            checksum,
        },
    )
}

/// An absolute offset to parse at: anywhere a real file or stream can reach.
fn offset() -> impl Strategy<Value = u64> {
    0..(1u64 << 48)
}

// ---------------------------------------------------------------------------------------------
// Round trips.

proptest! {
    #[test]
    fn footer_round_trips(footer in footer(), at in offset()) {
        let bytes = footer.encode();
        let (parsed, status) = Footer::parse(&bytes, at).unwrap();
        prop_assert_eq!(status, ChecksumStatus::Valid);
        let stored = u32::from_be_bytes(bytes[64..68].try_into().unwrap());
        prop_assert_eq!(&parsed, &Footer { checksum: stored, ..footer });
        prop_assert_eq!(parsed.encode(), bytes);
        // The last byte is reserved, so a pre-2004 511-byte footer parses the same.
        prop_assert_eq!(Footer::parse(&bytes[..511], at).unwrap().0, parsed);
    }

    #[test]
    fn header_round_trips(header in header(), at in offset()) {
        let bytes = header.encode();
        let parsed = DynamicHeader::parse(&bytes, at).unwrap();
        let stored = u32::from_be_bytes(bytes[36..40].try_into().unwrap());
        prop_assert_eq!(&parsed, &DynamicHeader { checksum: stored, ..header });
        prop_assert_eq!(parsed.encode(), bytes);
    }

    #[test]
    fn locator_round_trips(locator in locator()) {
        prop_assert_eq!(ParentLocator::parse(&locator.encode()), locator);
    }

    #[test]
    fn bat_round_trips(entries in prop::collection::vec(any::<u32>(), 0..=4096), at in offset()) {
        let mut bat = Bat::unallocated(entries.len() as u32);
        for (index, sector) in entries.iter().enumerate() {
            bat.set(index as u32, *sector);
        }
        let bytes = bat.encode();
        prop_assert_eq!(bytes.len() % 512, 0);
        prop_assert!(bytes[entries.len() * 4..].iter().all(|&b| b == 0xFF), "padded with 0xFF");
        let parsed = Bat::parse(&bytes, bat.len(), at).unwrap();
        prop_assert_eq!(parsed.raw(), &entries[..]);
    }

    #[test]
    fn batmap_header_round_trips(header in batmap_header(), at in offset()) {
        prop_assert_eq!(BatmapHeader::parse(&header.encode(), at).unwrap(), Some(header));
    }
}

// ---------------------------------------------------------------------------------------------
// Arbitrary bytes: no panic, and whatever parses re-encodes to itself.

/// Arbitrary bytes with the cookie and a valid checksum put in, so that parsing gets past the
/// first two checks and reaches the field validation.
fn sealed(mut bytes: Vec<u8>, cookie: &[u8; 8], checksum_at: usize) -> Vec<u8> {
    bytes[..8].copy_from_slice(cookie);
    let sum = ones_complement_checksum(&bytes, checksum_at);
    bytes[checksum_at..checksum_at + 4].copy_from_slice(&sum.to_be_bytes());
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        entries in any::<u32>(),
        at in offset(),
    ) {
        let _ = Footer::parse(&bytes, at);
        let _ = DynamicHeader::parse(&bytes, at);
        let _ = Bat::parse(&bytes, entries, at);
        let _ = BatmapHeader::parse(&bytes, at);
        let checked = check_bytes(&bytes);
        let opened = VhdLayer::from_bytes(Path::new("arbitrary.vhd"), Bytes::from(bytes));
        prop_assert!(opened.is_err() || checked.is_ok(), "check must read what open reads");
    }

    #[test]
    fn sealed_footers_reparse_to_themselves(bytes in prop::collection::vec(any::<u8>(), 512)) {
        let bytes = sealed(bytes, b"conectix", 64);
        if let Ok((footer, _)) = Footer::parse(&bytes, 0) {
            let (again, _) = Footer::parse(&footer.encode(), 0).unwrap();
            prop_assert_eq!(Footer { checksum: again.checksum, ..footer }, again);
        }
    }

    #[test]
    fn sealed_headers_reparse_to_themselves(bytes in prop::collection::vec(any::<u8>(), 1024)) {
        let bytes = sealed(bytes, b"cxsparse", 36);
        if let Ok(header) = DynamicHeader::parse(&bytes, 512) {
            let again = DynamicHeader::parse(&header.encode(), 512).unwrap();
            prop_assert_eq!(DynamicHeader { checksum: again.checksum, ..header }, again);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Corrupted images: open, check and read the whole disk, never panicking.

/// Two small images written by the crate's own writer: a dynamic disk with full, partial and
/// isolated-sector blocks, and a differencing child (with locators) holding a partial block.
fn images() -> &'static [Vec<u8>] {
    static IMAGES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.vhd");
        let mut options = CreateOptions::dynamic(64 << 10);
        options.block_size = 4096;
        create(&base, &options).unwrap();
        let mut writer = VhdWriter::open(&base).unwrap();
        writer.write_sectors(0, &[0xA5; 4096]).unwrap();
        writer.write_sectors(3 * 4096 + 512, &[0x5A; 1024]).unwrap();
        writer
            .write_sectors(3 * 4096 + 7 * 512, &[0x3C; 512])
            .unwrap();
        writer.write_sectors(60 << 10, &[0xC3; 4096]).unwrap();
        writer.flush().unwrap();

        let child = dir.path().join("child.vhd");
        let mut options = CreateOptions::differencing(
            64 << 10,
            ParentLink {
                uuid: options.uuid,
                timestamp: VhdTimestamp(0),
                relative_path: "base.vhd".into(),
            },
        );
        options.block_size = 4096;
        create(&child, &options).unwrap();
        let mut writer = VhdWriter::open(&child).unwrap();
        writer.write_sectors(4096 + 1024, &[0x77; 512]).unwrap();
        writer.flush().unwrap();
        [base, child].map(|p| std::fs::read(p).unwrap()).to_vec()
    })
}

/// Recompute the checksums of both footers and the header, so that a corruption inside them
/// reaches the field checks instead of stopping at the checksum.
fn reseal(bytes: &mut [u8]) {
    let len = bytes.len();
    for (at, size, checksum_at) in [(0, 512, 64), (len - 512, 512, 64), (512, 1024, 36)] {
        let sum = ones_complement_checksum(&bytes[at..at + size], checksum_at);
        bytes[at + checksum_at..at + checksum_at + 4].copy_from_slice(&sum.to_be_bytes());
    }
}

/// Open, check, and read every byte of the disk (up to 16 MiB) through a one-layer chain.
fn exercise(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    let checked = check_bytes(&bytes);
    let opened = VhdLayer::from_bytes(Path::new("corrupt.vhd"), Bytes::from(bytes));
    prop_assert!(
        opened.is_err() || checked.is_ok(),
        "check must read what open reads"
    );
    let Ok(layer) = opened else { return Ok(()) };
    let _ = layer.parent_locator_paths();
    let Ok(chain) = Chain::from_layers(vec![layer]) else {
        return Ok(());
    };
    let end = chain.virtual_size().min(16 << 20);
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0;
    while at < end {
        let n = (end - at).min(buf.len() as u64) as usize;
        chain.read_at(at, &mut buf[..n]);
        at += n as u64;
    }
    let blocks = end.div_ceil(u64::from(chain.block_size())) as u32;
    for index in 0..blocks {
        let _ = chain.block_data(index);
    }
    Ok(())
}

/// Values that sit on the edges of sizes, offsets and counts.
fn interesting_word() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(511),
        Just(512),
        Just(0x7FFF_FFFF),
        Just(0x8000_0000),
        Just(0xFFFF_FFFE),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn single_byte_corruptions_never_panic(
        image in 0..2usize,
        position in any::<prop::sample::Index>(),
        flip in 1..=255u8,
        reseal_checksums in any::<bool>(),
    ) {
        let mut bytes = images()[image].clone();
        let at = position.index(bytes.len());
        bytes[at] ^= flip;
        if reseal_checksums {
            reseal(&mut bytes);
        }
        exercise(bytes)?;
    }

    /// A 32-bit field of the metadata (footer copy, header, BAT, locators, end footer) set to an
    /// edge value with checksums resealed: this reaches the size and offset arithmetic.
    #[test]
    fn metadata_word_corruptions_never_panic(
        image in 0..2usize,
        position in any::<prop::sample::Index>(),
        word in interesting_word(),
        at_end in any::<bool>(),
    ) {
        let mut bytes = images()[image].clone();
        let len = bytes.len();
        let at = if at_end {
            len - 512 + position.index(128) * 4
        } else {
            position.index(768) * 4
        };
        bytes[at..at + 4].copy_from_slice(&word.to_be_bytes());
        reseal(&mut bytes);
        exercise(bytes)?;
    }
}

#[test]
fn base_images_open_and_check_clean() {
    for bytes in images() {
        let report = check_bytes(bytes).unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
        exercise(bytes.clone()).unwrap();
    }
}
