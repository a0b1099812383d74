//! Malformed VHD inputs. Each row starts from a valid image built with the crate's own encoders,
//! breaks it in one specific way, and states exactly what must happen: the error
//! `VhdLayer::from_bytes` refuses it with (kind, structure, field, byte offset), or that it opens
//! and notes the quirk; and the byte offset at which `check_bytes` reports the problem, or that
//! the bytes are not a VHD at all. Every row runs under a memory and time guard, and every image
//! that opens is also read end to end through a chain, so "no panic, no unbounded allocation" is
//! measured for each input rather than assumed.
//!
//! The committed corpus in `testdata/malformed/` is generated from this table by
//! `cargo test --test malformed -- --ignored`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::Bytes;
use uuid::Uuid;
use vhdsync::image::check::{CheckReport, Finding, check_bytes};
use vhdsync::image::{Chain, ImageError, VhdLayer};
use vhdsync::vhd::batmap::{self, BatmapHeader};
use vhdsync::vhd::locator::encode_utf16le;
use vhdsync::vhd::{
    Bat, DiskType, DynamicHeader, ErrorKind, Footer, FormatError, MAX_BAT_ENTRIES,
    MAX_VIRTUAL_SIZE, ParentLocator, PlatformCode, Structure, VhdTimestamp, bitmap,
    ones_complement_checksum,
};

// ---------------------------------------------------------------------------------------------
// Memory guard: the largest single allocation made by this thread.

/// Records the largest single allocation request of the current thread. A reader that sized a
/// buffer from an unchecked count (a 0xFFFFFFFF-entry BAT is a 16 GiB request) shows up here
/// even when the machine would have satisfied it lazily.
struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    // `try_with`: the allocator also runs while this thread's locals are being torn down.
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator; we only observe sizes.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller upholds `alloc`'s contract, which we pass on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// No row's open + check + read may make a single allocation larger than this (inputs are at
/// most 12 KiB; reads go through a 64 KiB buffer).
const ALLOCATION_LIMIT: usize = 1 << 20;
/// Nor take longer than this, even unoptimised.
const TIME_LIMIT: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// The valid images every row starts from.
//
// Eight blocks of 2 KiB (16 KiB virtual): blocks 0 and 2 full, block 5 with only its first two
// sectors. The kilobyte after the BAT holds the parent locator payloads of the differencing
// variant and the batmap of the blktap variant, and is a legal gap in the plain dynamic one, so
// that every variant has the same offsets.

const BLOCK_SIZE: u32 = 2048;
const BLOCKS: u32 = 8;
const VIRTUAL_SIZE: u64 = BLOCK_SIZE as u64 * BLOCKS as u64;
const HEADER_AT: u64 = 512;
const BAT_AT: u64 = 1536;
/// Locator payloads (differencing) or the batmap header and map (blktap).
const EXTRA_AT: u64 = 2048;
const FIRST_BLOCK_AT: u64 = 3072;
/// A block on disk: one sector of bitmap, then the data.
const BLOCK_BYTES: u64 = 512 + BLOCK_SIZE as u64;
const ALLOCATED: [u32; 3] = [0, 2, 5];
/// The end footer of every sparse base image, and so the length less 512.
const FOOTER_AT: u64 = FIRST_BLOCK_AT + ALLOCATED.len() as u64 * BLOCK_BYTES;
const LEN: u64 = FOOTER_AT + 512;
/// The footer of the fixed base image sits right after its data.
const FIXED_FOOTER_AT: u64 = VIRTUAL_SIZE;

/// Fixed identities and time stamps keep the generated fixtures byte-stable.
const IMAGE_UUID: u128 = 0x7668_6473_796e_6300_0000_0000_0000_0001;
const PARENT_UUID: u128 = 0x7668_6473_796e_6300_0000_0000_0000_0002;
const TIMESTAMP: VhdTimestamp = VhdTimestamp(0x2D1C_5A3B);

/// Absolute offset of parent locator entry `i` in the header.
const fn locator_entry(i: u64) -> u64 {
    HEADER_AT + 576 + 24 * i
}

#[derive(Clone)]
struct Image {
    footer: Footer,
    header: DynamicHeader,
    bat: Bat,
    /// Raw bytes at fixed offsets: blocks, locator payloads, the batmap.
    extents: Vec<(u64, Vec<u8>)>,
}

impl Image {
    fn dynamic() -> Image {
        let mut footer = Footer::new(
            DiskType::Dynamic,
            VIRTUAL_SIZE,
            Uuid::from_u128(IMAGE_UUID),
            VhdTimestamp(0),
        );
        footer.timestamp = TIMESTAMP;
        let mut bat = Bat::unallocated(BLOCKS);
        let mut extents = Vec::new();
        for (n, index) in ALLOCATED.into_iter().enumerate() {
            let at = FIRST_BLOCK_AT + n as u64 * BLOCK_BYTES;
            bat.set(index, (at / 512) as u32);
            extents.push((at, block(index)));
        }
        Image {
            footer,
            header: DynamicHeader::new(BAT_AT, BLOCKS, BLOCK_SIZE),
            bat,
            extents,
        }
    }

    /// A child as blktap writes it: parent name, a `MacX` URL and a `W2ru` UTF-16LE path.
    fn differencing() -> Image {
        let mut image = Image::dynamic();
        image.footer.disk_type = DiskType::Differencing;
        let header = &mut image.header;
        header.parent_unique_id = Uuid::from_u128(PARENT_UUID);
        header.parent_timestamp = TIMESTAMP;
        header.parent_unicode_name = "base.vhd".into();
        let payloads = [
            (PlatformCode::MACX, b"file://./base.vhd".to_vec()),
            (PlatformCode::W2RU, encode_utf16le(".\\base.vhd")),
        ];
        for (i, (code, payload)) in payloads.into_iter().enumerate() {
            let at = EXTRA_AT + 512 * i as u64;
            header.parent_locators[i] = ParentLocator {
                code,
                data_space: 512,
                data_length: payload.len() as u32,
                reserved: 0,
                data_offset: at,
            };
            image.extents.push((at, payload));
        }
        image
    }

    /// A blktap image: creator `tap` 1.3 and a batmap marking blocks 0 and 2 as full.
    fn blktap() -> Image {
        let mut image = Image::dynamic();
        image.footer.creator_app = *b"tap\0";
        image.footer.creator_version = 0x0001_0003;
        image.footer.creator_host_os = 0;
        let mut map = vec![0u8; 512];
        bitmap::set_range(&mut map, 0, 1);
        bitmap::set_range(&mut map, 2, 1);
        let header = BatmapHeader {
            map_offset: EXTRA_AT + 512,
            map_sectors: 1,
            version: 0x0001_0002,
            checksum: batmap::map_checksum(&map),
        };
        image.extents.push((EXTRA_AT, header.encode().to_vec()));
        image.extents.push((EXTRA_AT + 512, map));
        image
    }

    /// The file: every structure at its fixed place, whatever its fields now say.
    fn bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; LEN as usize];
        let footer = self.footer.encode();
        put(&mut out, 0, &footer);
        put(&mut out, HEADER_AT, &self.header.encode());
        put(&mut out, BAT_AT, &self.bat.encode());
        for (at, bytes) in &self.extents {
            put(&mut out, *at, bytes);
        }
        put(&mut out, FOOTER_AT, &footer);
        out
    }
}

/// Block `index` as stored: its bitmap sector, then its data. Block 5 holds only its first two
/// sectors, and the rest is zero as the spec requires of a dynamic disk.
fn block(index: u32) -> Vec<u8> {
    let present = if index == 5 { 2 } else { 4 };
    let mut bytes = vec![0u8; BLOCK_BYTES as usize];
    bitmap::set_range(&mut bytes[..512], 0, present);
    let data = &mut bytes[512..512 + present as usize * 512];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i % 251) as u8 ^ index as u8;
    }
    bytes
}

/// A fixed disk: the 16 KiB of data, then the footer.
fn fixed(change: impl FnOnce(&mut Footer)) -> Vec<u8> {
    let mut footer = Footer::new(
        DiskType::Fixed,
        VIRTUAL_SIZE,
        Uuid::from_u128(IMAGE_UUID),
        VhdTimestamp(0),
    );
    footer.timestamp = TIMESTAMP;
    change(&mut footer);
    let mut out = block(0)[512..].repeat(BLOCKS as usize);
    out.extend_from_slice(&footer.encode());
    out
}

fn put(out: &mut [u8], at: u64, bytes: &[u8]) {
    out[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
}

/// An image with some fields changed, encoded with correct checksums.
fn with(mut image: Image, change: impl FnOnce(&mut Image)) -> Vec<u8> {
    change(&mut image);
    image.bytes()
}

/// An image's bytes changed directly, checksums left as they are.
fn raw(image: Image, change: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut bytes = image.bytes();
    change(&mut bytes);
    bytes
}

/// Set byte `rel` of both footers and recompute their checksums, for fields the typed footer
/// cannot hold (deprecated disk types, reserved bytes).
fn footer_byte(rel: usize, value: u8) -> Vec<u8> {
    raw(Image::dynamic(), |b| {
        for at in [0, FOOTER_AT as usize] {
            b[at + rel] = value;
            let sum = ones_complement_checksum(&b[at..at + 512], 64);
            b[at + 64..at + 68].copy_from_slice(&sum.to_be_bytes());
        }
    })
}

/// Set byte `rel` of the header and recompute its checksum.
fn header_byte(rel: usize, value: u8) -> Vec<u8> {
    raw(Image::dynamic(), |b| {
        let at = HEADER_AT as usize;
        b[at + rel] = value;
        let sum = ones_complement_checksum(&b[at..at + 1024], 36);
        b[at + 36..at + 40].copy_from_slice(&sum.to_be_bytes());
    })
}

fn truncated(len: u64) -> Vec<u8> {
    let mut bytes = Image::dynamic().bytes();
    bytes.truncate(len as usize);
    bytes
}

// ---------------------------------------------------------------------------------------------
// The table.

/// What `VhdLayer::from_bytes` must do with the input.
#[derive(Debug)]
enum Open {
    /// Refuse it: error kind, structure, field, and the absolute offset of that field.
    Fails(ErrorKind, Structure, &'static str, u64),
    /// Open it; the damage is for `check` to find.
    Opens,
    /// Open it by falling back or ignoring something, with a note containing this text.
    Notes(&'static str),
    /// Open it, but decoding parent locator `i` fails with this kind and field.
    LocatorFails(u8, ErrorKind, &'static str),
}

/// What `check_bytes` must report.
#[derive(Debug)]
enum Check {
    /// The bytes are not recognisable as a VHD: `check_bytes` fails with this kind.
    Fatal(ErrorKind),
    /// A problem at this absolute byte offset whose text contains this, among others that
    /// follow from the same damage.
    Problem(u64, &'static str),
    /// Exactly one problem, at this offset and containing this text: the row's single defect
    /// must not also produce false findings elsewhere.
    Only(u64, &'static str),
}

struct Case {
    name: &'static str,
    /// The defect, listed in `testdata/malformed/README.md` for the committed fixtures.
    defect: &'static str,
    build: fn() -> Vec<u8>,
    open: Open,
    check: Check,
}

/// Declares the table once and derives one `#[test]` per row from it, so that a failing row
/// is named by its own test while `every_row` still runs them all.
macro_rules! table {
    ($($name:ident { $($field:ident: $value:expr),* $(,)? })*) => {
        fn cases() -> Vec<Case> {
            vec![$(Case { name: stringify!($name), $($field: $value),* }),*]
        }

        mod row {
            $(#[test] fn $name() { super::run_named(stringify!($name)); })*
        }
    };
}

use Check::{Fatal, Only, Problem};
use ErrorKind::{
    BadChecksum, BadCookie, BadText, BadValue, OutOfBounds, Overlap, TooLarge, Truncated,
};
use Open::{Fails, LocatorFails, Notes, Opens};

table! {
    // --- Truncation: an interrupted copy or download. Every cut must be named, not read past.
    empty_file {
        defect: "0 bytes: no footer anywhere",
        build: Vec::new,
        open: Fails(Truncated, Structure::File, "length", 0),
        check: Fatal(Truncated),
    }
    hundred_bytes {
        defect: "only the first 100 bytes of the footer copy",
        build: || truncated(100),
        open: Fails(Truncated, Structure::File, "length", 0),
        check: Fatal(Truncated),
    }
    cut_mid_header {
        // The copy at 0 is used; its data_offset then points past EOF.
        defect: "cut at 1024 bytes, in the middle of the dynamic header",
        build: || truncated(1024),
        open: Fails(OutOfBounds, Structure::Footer, "data_offset", 16),
        check: Problem(16, "header outside"),
    }
    cut_mid_bat {
        defect: "cut at 1552 bytes, after 4 of the 8 BAT entries",
        build: || truncated(BAT_AT + 16),
        open: Fails(OutOfBounds, Structure::Header, "table_offset", HEADER_AT + 16),
        check: Problem(HEADER_AT + 16, "lies outside"),
    }
    cut_mid_block {
        defect: "cut 1500 bytes into block 0",
        build: || truncated(FIRST_BLOCK_AT + 1500),
        open: Fails(OutOfBounds, Structure::Block(0), "BAT entry", BAT_AT),
        check: Problem(BAT_AT, "past the end"),
    }
    cut_end_footer {
        // Every block is intact, so the copy at 0 keeps the file readable.
        defect: "the end footer is missing",
        build: || truncated(FOOTER_AT),
        open: Notes("using the copy at byte 0"),
        check: Problem(FOOTER_AT - 512, "end footer unusable"),
    }
    trailing_garbage {
        // The last 512 bytes are no longer the footer; the length is not whole sectors.
        defect: "100 zero bytes after the end footer",
        build: || raw(Image::dynamic(), |b| b.extend_from_slice(&[0; 100])),
        open: Notes("using the copy at byte 0"),
        check: Problem(LEN + 100, "not a whole number of sectors"),
    }

    // --- Footer.
    bad_cookie_both_footers {
        defect: "cookie `Conectix` in both footers",
        build: || raw(Image::dynamic(), |b| {
            b[0] = b'C';
            b[FOOTER_AT as usize] = b'C';
        }),
        open: Fails(BadCookie, Structure::Footer, "cookie", FOOTER_AT),
        check: Fatal(BadCookie),
    }
    bad_cookie_end_footer {
        defect: "cookie `Conectix` in the end footer only",
        build: || raw(Image::dynamic(), |b| b[FOOTER_AT as usize] = b'C'),
        open: Notes("using the copy at byte 0"),
        check: Only(FOOTER_AT, "end footer unusable"),
    }
    bad_checksum_end_footer {
        // The spec's fallback: Virtual PC uses the copy at 0. It must still be reported.
        defect: "end footer checksum wrong, the copy at 0 good",
        build: || raw(Image::dynamic(), |b| b[FOOTER_AT as usize + 67] ^= 1),
        open: Notes("using the copy at byte 0"),
        check: Only(FOOTER_AT, "end footer unusable"),
    }
    bad_checksum_both_footers {
        defect: "checksum wrong in both footers",
        build: || raw(Image::dynamic(), |b| {
            b[67] ^= 1;
            b[FOOTER_AT as usize + 67] ^= 1;
        }),
        open: Fails(BadChecksum, Structure::Footer, "checksum", FOOTER_AT + 64),
        check: Fatal(BadChecksum),
    }
    bad_checksum_fixed_disk {
        // A fixed disk has no copy to fall back to.
        defect: "fixed disk whose only footer has a wrong checksum",
        build: || {
            let mut b = fixed(|_| {});
            b[FIXED_FOOTER_AT as usize + 67] ^= 1;
            b
        },
        open: Fails(BadChecksum, Structure::Footer, "checksum", FIXED_FOOTER_AT + 64),
        check: Fatal(BadChecksum),
    }
    fixed_disk_shorter_than_current_size {
        // The footer promises 1 MiB of data; the file holds 16 KiB. Reading would run off the end.
        defect: "fixed disk whose current_size exceeds the data in the file",
        build: || fixed(|f| f.current_size = 1 << 20),
        open: Fails(Truncated, Structure::File, "length", 0),
        check: Only(FIXED_FOOTER_AT + 48, "current_size"),
    }
    current_size_above_2040_gib {
        // Past what a u32 sector BAT can address; block counts would overflow u32.
        defect: "current_size one sector above 2040 GiB",
        build: || with(Image::dynamic(), |i| i.footer.current_size = MAX_VIRTUAL_SIZE + 512),
        open: Fails(TooLarge, Structure::Footer, "current_size", FOOTER_AT + 48),
        check: Fatal(TooLarge),
    }
    deprecated_disk_type_5 {
        defect: "disk type 5 (deprecated) in both footers",
        build: || footer_byte(63, 5),
        open: Fails(BadValue, Structure::Footer, "disk_type", FOOTER_AT + 60),
        check: Fatal(BadValue),
    }
    data_offset_outside_file {
        // The header would be read from 1 TiB into a 11 KiB file.
        defect: "footer data_offset 2^40, far past the end of the file",
        build: || with(Image::dynamic(), |i| i.footer.data_offset = 1 << 40),
        open: Fails(OutOfBounds, Structure::Footer, "data_offset", FOOTER_AT + 16),
        check: Only(FOOTER_AT + 16, "header outside"),
    }
    data_offset_unaligned {
        defect: "footer data_offset 513, not sector aligned",
        build: || with(Image::dynamic(), |i| i.footer.data_offset = 513),
        open: Fails(BadValue, Structure::Footer, "data_offset", FOOTER_AT + 16),
        check: Fatal(BadValue),
    }
    footer_reserved_bytes_nonzero {
        // vhd-util check rejects it; a reader must not take meaning from it.
        defect: "footer reserved byte 300 is 0x5A (checksums valid)",
        build: || footer_byte(300, 0x5A),
        open: Opens,
        check: Only(FOOTER_AT + 86, "reserved bytes"),
    }
    footer_hidden_out_of_range {
        defect: "blktap hidden byte 7, where only 0 and 1 mean anything",
        build: || with(Image::dynamic(), |i| i.footer.hidden = 7),
        open: Opens,
        check: Only(FOOTER_AT + 84, "hidden 7"),
    }
    footer_features_lack_reserved_bit {
        defect: "footer features 0: the reserved bit 0x2 is clear",
        build: || with(Image::dynamic(), |i| i.footer.features = 0),
        open: Opens,
        check: Only(FOOTER_AT + 8, "reserved bit"),
    }
    footer_version_unknown {
        defect: "footer file format version 2.0",
        build: || with(Image::dynamic(), |i| i.footer.format_version = 0x0002_0000),
        open: Fails(BadValue, Structure::Footer, "format_version", FOOTER_AT + 12),
        check: Only(FOOTER_AT + 12, "version"),
    }
    footer_nil_unique_id {
        // Chains are linked by this id; a nil one links to anything that is also broken.
        defect: "footer unique id all zeros",
        build: || with(Image::dynamic(), |i| i.footer.unique_id = Uuid::nil()),
        open: Opens,
        check: Only(FOOTER_AT + 68, "unique id"),
    }
    footer_copy_differs {
        defect: "the copy at 0 has another unique id than the end footer",
        build: || raw(Image::dynamic(), |b| {
            let mut copy = Image::dynamic().footer;
            copy.unique_id = Uuid::from_u128(PARENT_UUID);
            b[..512].copy_from_slice(&copy.encode());
        }),
        open: Notes("differs from the end footer"),
        check: Only(0, "differs"),
    }

    // --- Dynamic header.
    bad_header_cookie {
        defect: "header cookie `Cxsparse`",
        build: || raw(Image::dynamic(), |b| b[HEADER_AT as usize] = b'C'),
        open: Fails(BadCookie, Structure::Header, "cookie", HEADER_AT),
        check: Only(HEADER_AT, "cookie"),
    }
    bad_header_checksum {
        defect: "header byte 100 changed without a new checksum",
        build: || raw(Image::dynamic(), |b| b[HEADER_AT as usize + 100] ^= 0x40),
        open: Fails(BadChecksum, Structure::Header, "checksum", HEADER_AT + 36),
        check: Only(HEADER_AT + 36, "checksum"),
    }
    block_size_not_power_of_two {
        // Block and bitmap arithmetic assume a single set bit.
        defect: "block size 12288 (3 x 4 KiB)",
        build: || with(Image::dynamic(), |i| i.header.block_size = 3 << 12),
        open: Fails(BadValue, Structure::Header, "block_size", HEADER_AT + 32),
        check: Only(HEADER_AT + 32, "block_size"),
    }
    block_size_2_gib {
        // The largest power of two a u32 holds: one block would be a 2 GiB buffer.
        defect: "block size 2^31",
        build: || with(Image::dynamic(), |i| i.header.block_size = 1 << 31),
        open: Fails(BadValue, Structure::Header, "block_size", HEADER_AT + 32),
        check: Only(HEADER_AT + 32, "block_size"),
    }
    block_size_4_gib {
        // 4 GiB itself does not fit the u32 field; all ones is the nearest a file can claim.
        defect: "block size 0xFFFFFFFF (4 GiB - 1)",
        build: || with(Image::dynamic(), |i| i.header.block_size = u32::MAX),
        open: Fails(BadValue, Structure::Header, "block_size", HEADER_AT + 32),
        check: Only(HEADER_AT + 32, "block_size"),
    }
    block_size_above_2_mib {
        // blktap, XAPI and Xen Orchestra all assume at most 2 MiB.
        defect: "block size 4 MiB",
        build: || with(Image::dynamic(), |i| i.header.block_size = 4 << 20),
        open: Fails(BadValue, Structure::Header, "block_size", HEADER_AT + 32),
        check: Only(HEADER_AT + 32, "block_size"),
    }
    block_size_below_512 {
        // Less than one sector: a block would have no whole sector and a zero-bit bitmap.
        defect: "block size 256",
        build: || with(Image::dynamic(), |i| i.header.block_size = 256),
        open: Fails(BadValue, Structure::Header, "block_size", HEADER_AT + 32),
        check: Only(HEADER_AT + 32, "block_size"),
    }
    block_size_zero {
        // Would divide by zero when sizing the disk in blocks.
        defect: "block size 0",
        build: || with(Image::dynamic(), |i| i.header.block_size = 0),
        open: Fails(BadValue, Structure::Header, "block_size", HEADER_AT + 32),
        check: Only(HEADER_AT + 32, "block_size"),
    }
    max_table_entries_u32_max {
        // A 16 GiB BAT: must be refused before anything is allocated.
        defect: "max_table_entries 0xFFFFFFFF",
        build: || with(Image::dynamic(), |i| i.header.max_table_entries = u32::MAX),
        open: Fails(TooLarge, Structure::Header, "max_table_entries", HEADER_AT + 28),
        check: Only(HEADER_AT + 28, "max_table_entries"),
    }
    max_table_entries_past_eof {
        // Within the entry cap, but a 64 MiB table in a 11 KiB file: bounds before allocation.
        defect: "max_table_entries 16 Mi: the BAT would run 64 MiB past the end",
        build: || with(Image::dynamic(), |i| i.header.max_table_entries = MAX_BAT_ENTRIES),
        open: Fails(OutOfBounds, Structure::Header, "table_offset", HEADER_AT + 16),
        check: Only(HEADER_AT + 16, "lies outside"),
    }
    bat_outside_file {
        defect: "table_offset 2^40",
        build: || with(Image::dynamic(), |i| i.header.table_offset = 1 << 40),
        open: Fails(OutOfBounds, Structure::Header, "table_offset", HEADER_AT + 16),
        check: Only(HEADER_AT + 16, "lies outside"),
    }
    bat_offset_near_u64_max {
        // offset + length overflows u64: bounds checks must not wrap.
        defect: "table_offset 0xFFFFFFFFFFFFFE00 with 16 Mi entries",
        build: || with(Image::dynamic(), |i| {
            i.header.table_offset = !511;
            i.header.max_table_entries = MAX_BAT_ENTRIES;
        }),
        open: Fails(OutOfBounds, Structure::Header, "table_offset", HEADER_AT + 16),
        check: Only(HEADER_AT + 16, "lies outside"),
    }
    table_offset_unaligned {
        defect: "table_offset 1537, not sector aligned",
        build: || with(Image::dynamic(), |i| i.header.table_offset = BAT_AT + 1),
        open: Fails(BadValue, Structure::Header, "table_offset", HEADER_AT + 16),
        check: Only(HEADER_AT + 16, "table_offset"),
    }
    bat_smaller_than_disk {
        // qemu: "Page table too small". Blocks past the table must read as unallocated.
        defect: "max_table_entries 4 for a disk of 8 blocks",
        build: || with(Image::dynamic(), |i| i.header.max_table_entries = 4),
        open: Fails(BadValue, Structure::Header, "max_table_entries", HEADER_AT + 28),
        check: Only(HEADER_AT + 28, "covers 4 blocks"),
    }
    header_data_offset_not_all_ones {
        // blktap rejects any value but all ones.
        defect: "header data_offset 0",
        build: || with(Image::dynamic(), |i| i.header.data_offset = 0),
        open: Fails(BadValue, Structure::Header, "data_offset", HEADER_AT + 8),
        check: Only(HEADER_AT + 8, "data_offset"),
    }
    header_version_unknown {
        defect: "header version 2.0",
        build: || with(Image::dynamic(), |i| i.header.header_version = 0x0002_0000),
        open: Fails(BadValue, Structure::Header, "header_version", HEADER_AT + 24),
        check: Only(HEADER_AT + 24, "version"),
    }
    header_reserved_bytes_nonzero {
        defect: "header reserved byte 900 is 0x5A (checksum valid)",
        build: || header_byte(900, 0x5A),
        open: Opens,
        check: Only(HEADER_AT + 768, "reserved bytes"),
    }

    // --- BAT and blocks.
    block_past_eof {
        defect: "BAT entry 1 points at sector 2^20, past the end",
        build: || with(Image::dynamic(), |i| i.bat.set(1, 1 << 20)),
        open: Fails(OutOfBounds, Structure::Block(1), "BAT entry", BAT_AT + 4),
        check: Only(BAT_AT + 4, "past the end"),
    }
    block_near_2_tib {
        // Entries are unsigned and near u32::MAX; byte offsets must be computed in u64.
        defect: "BAT entry 1 is 0xFFFFFFFE, just under 2 TiB",
        build: || with(Image::dynamic(), |i| i.bat.set(1, 0xFFFF_FFFE)),
        open: Fails(OutOfBounds, Structure::Block(1), "BAT entry", BAT_AT + 4),
        check: Only(BAT_AT + 4, "past the end"),
    }
    bat_over_footer_copy {
        // The BAT is read from the footer copy: entry 0 is "cone", far past the end.
        defect: "table_offset 0: the BAT overlaps the footer copy",
        build: || with(Image::dynamic(), |i| i.header.table_offset = 0),
        open: Fails(Overlap, Structure::Header, "table_offset", HEADER_AT + 16),
        check: Problem(0, "past the end"),
    }
    table_offset_inside_header {
        // The BAT would be read from the header's own locator entries.
        defect: "table_offset 1024, inside the dynamic header",
        build: || with(Image::dynamic(), |i| i.header.table_offset = HEADER_AT + 512),
        open: Fails(Overlap, Structure::Header, "table_offset", HEADER_AT + 16),
        check: Problem(HEADER_AT + 16, "overlaps dynamic header"),
    }
    block_overlaps_footer_copy {
        // Writing this block would destroy the footer copy.
        defect: "BAT entry 1 is sector 0",
        build: || with(Image::dynamic(), |i| i.bat.set(1, 0)),
        open: Fails(Overlap, Structure::Block(1), "BAT entry", BAT_AT + 4),
        check: Problem(BAT_AT + 4, "overlaps footer copy"),
    }
    block_overlaps_header {
        // vhd-util: "clobbers headers".
        defect: "BAT entry 1 is sector 1, the dynamic header",
        build: || with(Image::dynamic(), |i| i.bat.set(1, 1)),
        open: Fails(Overlap, Structure::Block(1), "BAT entry", BAT_AT + 4),
        check: Problem(BAT_AT + 4, "overlaps dynamic header"),
    }
    block_overlaps_bat {
        defect: "BAT entry 1 is sector 3, the BAT itself",
        build: || with(Image::dynamic(), |i| i.bat.set(1, 3)),
        open: Fails(Overlap, Structure::Block(1), "BAT entry", BAT_AT + 4),
        check: Problem(BAT_AT + 4, "overlaps BAT"),
    }
    blocks_overlap_each_other {
        // A write to one block would change the other.
        defect: "BAT entry 1 starts one sector into block 0",
        build: || with(Image::dynamic(), |i| i.bat.set(1, (FIRST_BLOCK_AT / 512) as u32 + 1)),
        open: Fails(Overlap, Structure::Block(1), "BAT entry", BAT_AT + 4),
        check: Problem(BAT_AT + 4, "overlaps block 0"),
    }
    bat_entries_share_a_block {
        // Two guest blocks would read, and a writer write, the same bytes.
        defect: "BAT entries 0 and 1 both point at block 0's sector",
        build: || with(Image::dynamic(), |i| i.bat.set(1, (FIRST_BLOCK_AT / 512) as u32)),
        open: Fails(Overlap, Structure::Block(1), "BAT entry", BAT_AT + 4),
        check: Only(BAT_AT + 4, "overlaps block 0"),
    }
    current_size_zero_with_blocks {
        // Reads as an empty disk, yet the file holds data: the size was lost.
        defect: "current_size 0 while three blocks are allocated",
        build: || with(Image::dynamic(), |i| i.footer.current_size = 0),
        open: Opens,
        check: Only(FOOTER_AT + 48, "current_size is 0"),
    }

    // --- Parent locators and parent fields (differencing disk).
    locator_data_space_600 {
        // Neither a sector count (< 512) nor a byte count (multiple of 512): blktap's rule.
        defect: "parent locator 0 data_space 600",
        build: || with(Image::differencing(), |i| i.header.parent_locators[0].data_space = 600),
        open: LocatorFails(0, BadValue, "data_space"),
        check: Only(locator_entry(0) + 4, "data_space"),
    }
    locator_payload_outside_file {
        defect: "parent locator 0 payload at 2^40",
        build: || with(Image::differencing(), |i| i.header.parent_locators[0].data_offset = 1 << 40),
        open: LocatorFails(0, OutOfBounds, "data_offset"),
        check: Only(locator_entry(0) + 16, "outside"),
    }
    locator_length_exceeds_space {
        defect: "parent locator 0 data_length 1000 in a 512-byte space",
        build: || with(Image::differencing(), |i| i.header.parent_locators[0].data_length = 1000),
        open: Opens,
        check: Problem(locator_entry(0) + 8, "exceeds"),
    }
    locator_payload_odd_utf16 {
        defect: "W2ru parent locator 1 with an odd data_length of 21 bytes",
        build: || with(Image::differencing(), |i| i.header.parent_locators[1].data_length = 21),
        open: LocatorFails(1, BadText, "payload"),
        check: Only(EXTRA_AT + 512, "UTF-16"),
    }
    locator_overlaps_bat {
        defect: "parent locator 0 payload placed on the BAT",
        build: || with(Image::differencing(), |i| i.header.parent_locators[0].data_offset = BAT_AT),
        open: Fails(Overlap, Structure::ParentLocator(0), "data_offset", locator_entry(0) + 16),
        check: Problem(locator_entry(0) + 16, "overlaps BAT"),
    }
    locator_payload_lone_surrogate {
        // Read the other way round it decodes, to a wrong path: it must be refused instead.
        defect: "W2ru parent locator 1 holds a lone UTF-16 surrogate",
        build: || raw(Image::differencing(), |b| put(b, EXTRA_AT + 512 + 4, &[0x00, 0xD8])),
        open: LocatorFails(1, BadText, "payload"),
        check: Only(EXTRA_AT + 512, "UTF-16"),
    }
    parent_name_not_utf16 {
        defect: "parent unicode name holds a lone UTF-16 surrogate",
        build: || raw(Image::differencing(), |b| {
            put(b, HEADER_AT + 64 + 2, &[0xDC, 0x00]);
            let at = HEADER_AT as usize;
            let sum = ones_complement_checksum(&b[at..at + 1024], 36);
            b[at + 36..at + 40].copy_from_slice(&sum.to_be_bytes());
        }),
        open: Opens,
        check: Only(HEADER_AT + 64, "parent_unicode_name"),
    }
    locator_unused_entry_nonzero {
        // Xen Orchestra's defect: an empty entry with a data offset (vhd-util: "non-zero locator").
        defect: "parent locator 7 has platform code none but a data offset",
        build: || with(Image::differencing(), |i| i.header.parent_locators[7].data_offset = 4096),
        open: Opens,
        check: Only(locator_entry(7), "non-zero"),
    }
    locator_unknown_platform_code {
        defect: "parent locator 2 has platform code 0x12345678",
        build: || with(Image::differencing(), |i| {
            i.header.parent_locators[2] = ParentLocator {
                code: PlatformCode(0x1234_5678),
                data_space: 512,
                data_length: 4,
                reserved: 0,
                data_offset: EXTRA_AT,
            };
        }),
        open: Opens,
        check: Only(locator_entry(2), "unknown platform code"),
    }
    differencing_without_parent_info {
        // Nothing to find the parent by: the chain cannot be built.
        defect: "differencing disk with no parent name and no locators",
        build: || with(Image::differencing(), |i| {
            i.header.parent_unicode_name.clear();
            i.header.parent_locators = Default::default();
            i.extents.retain(|(at, _)| *at >= FIRST_BLOCK_AT);
        }),
        open: Opens,
        check: Only(HEADER_AT + 64, "without a parent"),
    }
    differencing_nil_parent_uuid {
        // The parent can be found by name but never verified.
        defect: "differencing disk whose parent unique id is all zeros",
        build: || with(Image::differencing(), |i| i.header.parent_unique_id = Uuid::nil()),
        open: Opens,
        check: Only(HEADER_AT + 40, "null parent"),
    }

    // --- blktap batmap: a fast path that is only trusted when it verifies.
    batmap_bad_checksum {
        // Trusting it would read block 5's missing sectors as data.
        defect: "tap creator; one byte of the batmap changed without a new checksum",
        build: || raw(Image::blktap(), |b| b[EXTRA_AT as usize + 600] ^= 0x01),
        open: Notes("batmap at byte 2048 ignored"),
        check: Only(EXTRA_AT + 24, "checksum"),
    }
    batmap_outside_file {
        defect: "tap creator; the batmap's map offset is 2^40",
        build: || raw(Image::blktap(), |b| {
            put(b, EXTRA_AT + 8, &(1u64 << 40).to_be_bytes());
        }),
        open: Notes("batmap at byte 2048 ignored"),
        check: Only(EXTRA_AT + 8, "outside the file"),
    }
    batmap_offset_unaligned {
        defect: "tap creator; the batmap's map offset is 2561",
        build: || raw(Image::blktap(), |b| {
            put(b, EXTRA_AT + 8, &(EXTRA_AT + 513).to_be_bytes());
        }),
        open: Notes("batmap ignored"),
        check: Only(EXTRA_AT + 8, "batmap_offset"),
    }
}

// ---------------------------------------------------------------------------------------------
// Running a row.

fn run_named(name: &str) {
    let case = cases()
        .into_iter()
        .find(|c| c.name == name)
        .expect("every generated test names a row");
    run(&case);
}

/// Open, check and (when it opens) read the row's input under the guards, then compare both
/// outcomes, reporting every mismatch of the row at once.
fn run(case: &Case) {
    let input = (case.build)();
    let shared = Bytes::from(input.clone());
    LARGEST.with(|l| l.set(0));
    let started = Instant::now();

    let opened = VhdLayer::from_bytes(Path::new(case.name), shared);
    let checked = check_bytes(&input);
    let mismatches: Vec<String> = [open_mismatch(case, &opened), check_mismatch(case, &checked)]
        .into_iter()
        .flatten()
        .collect();
    if let Ok(layer) = opened {
        read_everything(layer);
    }

    let elapsed = started.elapsed();
    let largest = LARGEST.with(Cell::get);
    assert!(
        mismatches.is_empty(),
        "{}:\n{}",
        case.name,
        mismatches.join("\n")
    );
    assert!(
        elapsed < TIME_LIMIT,
        "{}: took {elapsed:?}, over {TIME_LIMIT:?}",
        case.name
    );
    assert!(
        largest <= ALLOCATION_LIMIT,
        "{}: allocated {largest} bytes at once, over {ALLOCATION_LIMIT}",
        case.name
    );
}

fn open_mismatch(case: &Case, opened: &Result<VhdLayer, ImageError>) -> Option<String> {
    let ok = match (&case.open, opened) {
        (Fails(kind, structure, field, offset), Err(e)) => e.format().is_some_and(|f| {
            (f.kind, f.structure, f.field, f.offset) == (*kind, *structure, *field, *offset)
        }),
        (Opens, Ok(_)) => true,
        (Notes(text), Ok(layer)) => layer.notes().iter().any(|n| n.contains(text)),
        (LocatorFails(index, kind, field), Ok(layer)) => {
            layer.parent_locator_paths().into_iter().any(|(i, path)| {
                i == *index
                    && path.is_err_and(|e| {
                        (e.kind, e.structure, e.field)
                            == (*kind, Structure::ParentLocator(*index), *field)
                    })
            })
        }
        _ => false,
    };
    let found = match opened {
        Ok(layer) => format!("opened, notes {:?}", layer.notes()),
        Err(e) => match e.format() {
            Some(format) => format!("{format:#?}"),
            None => e.to_string(),
        },
    };
    (!ok).then(|| format!("open expected {:?}, found {found}", case.open))
}

fn check_mismatch(case: &Case, checked: &Result<CheckReport, FormatError>) -> Option<String> {
    let ok = match (&case.check, checked) {
        (Fatal(kind), Err(e)) => e.kind == *kind,
        (Problem(offset, text), Ok(report)) => report
            .problems
            .iter()
            .any(|p| finding_matches(p, *offset, text)),
        (Only(offset, text), Ok(report)) => {
            matches!(&report.problems[..], [p] if finding_matches(p, *offset, text))
        }
        _ => false,
    };
    (!ok).then(|| format!("check expected {:?}, found {checked:#?}", case.check))
}

fn finding_matches(finding: &Finding, offset: u64, text: &str) -> bool {
    finding.offset == offset && (finding.message.contains(text) || finding.structure.contains(text))
}

/// Read the whole disk through a one-layer chain (a differencing layer alone is not a chain).
fn read_everything(layer: VhdLayer) {
    let Ok(chain) = Chain::from_layers(vec![layer]) else {
        return;
    };
    let mut buf = vec![0u8; 64 << 10];
    let end = chain.virtual_size().min(16 << 20);
    let mut at = 0;
    while at < end {
        let n = (end - at).min(buf.len() as u64) as usize;
        chain.read_at(at, &mut buf[..n]);
        at += n as u64;
    }
}

/// Runs every row, even past a failing one, so the count and the list of failures are whole.
#[test]
fn every_row() {
    let cases = cases();
    let failed: Vec<&str> = cases
        .iter()
        .filter(|case| std::panic::catch_unwind(|| run(case)).is_err())
        .map(|case| case.name)
        .collect();
    println!("malformed-input table: {} cases", cases.len());
    assert!(cases.len() >= 30);
    assert!(failed.is_empty(), "failing rows: {failed:?}");
}

/// The guard must see what it guards against, or every row would pass it vacuously.
#[test]
fn memory_guard_sees_a_large_allocation() {
    LARGEST.with(|l| l.set(0));
    let big = std::hint::black_box(vec![0u8; 2 * ALLOCATION_LIMIT]);
    assert!(LARGEST.with(Cell::get) >= big.len());
}

/// The variants rows start from must be clean, or a row could pass on the wrong defect.
#[test]
fn base_images_are_clean_and_read_back() {
    for (name, image) in [
        ("dynamic", Image::dynamic()),
        ("differencing", Image::differencing()),
        ("blktap", Image::blktap()),
    ] {
        let bytes = image.bytes();
        let report = check_bytes(&bytes).unwrap();
        assert!(report.is_clean(), "{name}: {:?}", report.problems);
        let layer = VhdLayer::from_bytes(Path::new(name), Bytes::from(bytes)).unwrap();
        assert!(layer.notes().is_empty(), "{name}: {:?}", layer.notes());
        assert_eq!(layer.has_batmap(), name == "blktap");
        assert!(layer.parent_locator_paths().iter().all(|(_, p)| p.is_ok()));
    }
    let fixed = fixed(|_| {});
    assert!(check_bytes(&fixed).unwrap().is_clean());
    let layer = VhdLayer::from_bytes(Path::new("fixed"), Bytes::from(fixed)).unwrap();
    let chain = Chain::from_layers(vec![layer]).unwrap();
    let mut first = vec![0u8; BLOCK_SIZE as usize];
    chain.read_at(0, &mut first);
    assert_eq!(first, block(0)[512..]);

    let layer = VhdLayer::from_bytes(Path::new("dynamic"), Bytes::from(Image::dynamic().bytes()));
    let chain = Chain::from_layers(vec![layer.unwrap()]).unwrap();
    let mut block5 = vec![0u8; BLOCK_SIZE as usize];
    chain.read_at(5 * u64::from(BLOCK_SIZE), &mut block5);
    assert_eq!(block5, block(5)[512..], "partial block reads back exactly");
}

// ---------------------------------------------------------------------------------------------
// The committed corpus.

/// Rows committed as files: one or more of each kind of damage, 11 to 17 KiB each.
const FIXTURES: &[&str] = &[
    "hundred_bytes",
    "cut_mid_bat",
    "cut_mid_block",
    "cut_end_footer",
    "trailing_garbage",
    "bad_cookie_both_footers",
    "bad_checksum_end_footer",
    "bad_checksum_both_footers",
    "bad_checksum_fixed_disk",
    "fixed_disk_shorter_than_current_size",
    "deprecated_disk_type_5",
    "data_offset_outside_file",
    "footer_reserved_bytes_nonzero",
    "bad_header_cookie",
    "bad_header_checksum",
    "block_size_not_power_of_two",
    "max_table_entries_u32_max",
    "max_table_entries_past_eof",
    "block_size_4_gib",
    "bat_outside_file",
    "bat_smaller_than_disk",
    "block_past_eof",
    "block_overlaps_header",
    "blocks_overlap_each_other",
    "bat_entries_share_a_block",
    "table_offset_inside_header",
    "current_size_zero_with_blocks",
    "locator_data_space_600",
    "locator_payload_outside_file",
    "locator_unknown_platform_code",
    "locator_unused_entry_nonzero",
    "differencing_without_parent_info",
    "parent_name_not_utf16",
    "batmap_bad_checksum",
    "batmap_outside_file",
];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/malformed")
}

#[test]
#[ignore = "regenerates testdata/malformed/; run with --ignored"]
fn generate_fixtures() {
    let dir = fixture_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "vhd") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let cases = cases();
    let mut readme = String::from(
        "# Malformed VHD fixtures\n\n\
         Each file is a small valid image (16 KiB virtual in 2 KiB blocks: dynamic,\n\
         differencing, blktap or fixed) broken in one way. They are generated from the table\n\
         in `tests/malformed.rs`, which also states the exact error and check finding each\n\
         must produce; regenerate with\n\
         `cargo test --test malformed -- --ignored`. `tests/malformed.rs` opens and checks\n\
         every file here and requires a non-clean result without a panic.\n\n\
         | file | defect |\n|---|---|\n",
    );
    for name in FIXTURES {
        let case = cases.iter().find(|c| c.name == *name).unwrap();
        std::fs::write(dir.join(format!("{name}.vhd")), (case.build)()).unwrap();
        readme.push_str(&format!("| `{name}.vhd` | {} |\n", case.defect));
    }
    std::fs::write(dir.join("README.md"), readme).unwrap();
}

#[test]
fn committed_fixtures_are_flagged_without_panic() {
    let dir = fixture_dir();
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "vhd"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let mut total = 0;
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        total += bytes.len();
        assert!(bytes.len() < 64 << 10, "{}: too large", path.display());
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} not in README.md"
        );
        let opened = VhdLayer::open(path);
        let clean = matches!(check_bytes(&bytes), Ok(r) if r.is_clean());
        assert!(opened.is_err() || !clean, "{name}: opens and checks clean");
        if let Ok(layer) = opened {
            read_everything(layer);
        }
    }
    assert!(total < 512 << 10, "corpus is {total} bytes");
}

// ---------------------------------------------------------------------------------------------
// Through the real binary: exit codes and messages that name the file and the byte.

fn run_cli(args: &[&str], row: &str) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{row}.vhd"));
    let case = cases().into_iter().find(|c| c.name == row).unwrap();
    std::fs::write(&path, (case.build)()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_vhdsync"))
        .args(args)
        .arg(&path)
        .output()
        .unwrap();
    (output, path.display().to_string())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn cli_check_exits_2_when_not_a_vhd() {
    for (row, offset) in [
        ("bad_cookie_both_footers", FOOTER_AT),
        ("bad_checksum_both_footers", FOOTER_AT + 64),
    ] {
        let (out, path) = run_cli(&["check"], row);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{row}: {stderr}");
        assert!(stderr.contains(&path), "{row}: {stderr}");
        assert!(
            stderr.contains(&format!("at byte {offset}")),
            "{row}: {stderr}"
        );
    }
    let (out, _) = run_cli(&["check"], "empty_file");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn cli_check_exits_1_with_the_problem_offset() {
    for (row, offset) in [
        ("block_overlaps_header", BAT_AT + 4),
        ("block_past_eof", BAT_AT + 4),
        ("bad_checksum_end_footer", FOOTER_AT),
    ] {
        let (out, path) = run_cli(&["check"], row);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{row}: {stdout}");
        assert!(stdout.contains(&path), "{row}: {stdout}");
        assert!(
            stdout.contains(&format!("problem at byte {offset}")),
            "{row}: {stdout}"
        );
    }
}

#[test]
fn cli_info_exits_2_naming_file_and_offset() {
    for (row, offset) in [
        ("block_past_eof", BAT_AT + 4),
        ("bad_header_cookie", HEADER_AT),
        ("max_table_entries_u32_max", HEADER_AT + 28),
    ] {
        let (out, path) = run_cli(&["info"], row);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{row}: {stderr}");
        assert!(stderr.contains(&path), "{row}: {stderr}");
        assert!(
            stderr.contains(&format!("at byte {offset}")),
            "{row}: {stderr}"
        );
    }
}

#[test]
fn cli_info_shows_the_footer_fallback_as_a_note() {
    let (out, _) = run_cli(&["info"], "bad_checksum_end_footer");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("note:") && stdout.contains("using the copy at byte 0"));
}
