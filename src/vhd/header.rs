//! The 1024-byte dynamic disk header.

use uuid::Uuid;

use super::locator::{LOCATOR_SIZE, ParentLocator};
use super::{
    DEFAULT_BLOCK_SIZE, ErrorKind, FormatError, HEADER_SIZE, MAX_BAT_ENTRIES, MIN_BLOCK_SIZE,
    SECTOR_SIZE, Structure, VhdTimestamp, be_u32, be_u64, checksum::ones_complement_checksum,
};

pub const COOKIE: &[u8; 8] = b"cxsparse";
pub const HEADER_VERSION: u32 = 0x0001_0000;
/// The unused data offset: the spec says 0xFFFFFFFF, every tool writes 64 bits of ones.
pub const UNUSED_DATA_OFFSET: u64 = u64::MAX;

const CHECKSUM_AT: usize = 36;
const PARENT_NAME_AT: usize = 64;
const PARENT_NAME_BYTES: usize = 512;
pub const LOCATORS_AT: usize = 576;
pub const LOCATOR_COUNT: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicHeader {
    pub data_offset: u64,
    /// Absolute byte offset of the BAT.
    pub table_offset: u64,
    pub header_version: u32,
    pub max_table_entries: u32,
    /// Data bytes per block, bitmap excluded: a power of two from 512 B to 2 MiB.
    pub block_size: u32,
    pub checksum: u32,
    pub parent_unique_id: Uuid,
    pub parent_timestamp: VhdTimestamp,
    /// Decoded from UTF-16BE; blktap writes a basename, Xen Orchestra a relative path.
    pub parent_unicode_name: String,
    pub parent_locators: [ParentLocator; LOCATOR_COUNT],
}

impl DynamicHeader {
    /// A header for a new dynamic disk with its BAT at `table_offset`.
    pub fn new(table_offset: u64, max_table_entries: u32, block_size: u32) -> DynamicHeader {
        DynamicHeader {
            data_offset: UNUSED_DATA_OFFSET,
            table_offset,
            header_version: HEADER_VERSION,
            max_table_entries,
            block_size,
            checksum: 0,
            parent_unique_id: Uuid::nil(),
            parent_timestamp: VhdTimestamp(0),
            parent_unicode_name: String::new(),
            parent_locators: [ParentLocator::default(); LOCATOR_COUNT],
        }
    }

    /// Parse and validate a header. `at` is its absolute offset, for errors.
    pub fn parse(bytes: &[u8], at: u64) -> Result<DynamicHeader, FormatError> {
        let Some(b) = bytes.get(..HEADER_SIZE) else {
            return Err(FormatError::truncated(
                Structure::Header,
                at,
                bytes.len(),
                HEADER_SIZE,
            ));
        };
        let err = |kind, field, rel: usize, found: String, expected: &str| {
            FormatError::new(
                kind,
                Structure::Header,
                field,
                at + rel as u64,
                found,
                expected,
            )
        };
        if &b[0..8] != COOKIE {
            return Err(err(
                ErrorKind::BadCookie,
                "cookie",
                0,
                format!("{:?}", String::from_utf8_lossy(&b[0..8])),
                "\"cxsparse\"",
            ));
        }
        let stored = be_u32(b, CHECKSUM_AT);
        let computed = ones_complement_checksum(b, CHECKSUM_AT);
        if stored != computed {
            return Err(err(
                ErrorKind::BadChecksum,
                "checksum",
                CHECKSUM_AT,
                format!("{stored:#010x}"),
                &format!("{computed:#010x}"),
            ));
        }
        let block_size = be_u32(b, 32);
        if !block_size.is_power_of_two()
            || !(MIN_BLOCK_SIZE..=DEFAULT_BLOCK_SIZE).contains(&block_size)
        {
            return Err(err(
                ErrorKind::BadValue,
                "block_size",
                32,
                block_size.to_string(),
                "a power of two from 512 to 2097152",
            ));
        }
        let max_table_entries = be_u32(b, 28);
        if max_table_entries > MAX_BAT_ENTRIES {
            return Err(err(
                ErrorKind::TooLarge,
                "max_table_entries",
                28,
                max_table_entries.to_string(),
                &format!("at most {MAX_BAT_ENTRIES}"),
            ));
        }
        let table_offset = be_u64(b, 16);
        if !table_offset.is_multiple_of(SECTOR_SIZE) {
            return Err(err(
                ErrorKind::BadValue,
                "table_offset",
                16,
                table_offset.to_string(),
                "a sector-aligned offset",
            ));
        }
        let name_units: Vec<u16> = b[PARENT_NAME_AT..PARENT_NAME_AT + PARENT_NAME_BYTES]
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let mut parent_locators = [ParentLocator::default(); LOCATOR_COUNT];
        for (i, entry) in parent_locators.iter_mut().enumerate() {
            let start = LOCATORS_AT + i * LOCATOR_SIZE;
            let mut raw = [0u8; LOCATOR_SIZE];
            raw.copy_from_slice(&b[start..start + LOCATOR_SIZE]);
            *entry = ParentLocator::parse(&raw);
        }
        Ok(DynamicHeader {
            data_offset: be_u64(b, 8),
            table_offset,
            header_version: be_u32(b, 24),
            max_table_entries,
            block_size,
            checksum: stored,
            parent_unique_id: Uuid::from_bytes(b[40..56].try_into().unwrap_or_default()),
            parent_timestamp: VhdTimestamp(be_u32(b, 56)),
            parent_unicode_name: String::from_utf16_lossy(&name_units),
            parent_locators,
        })
    }

    /// Encode with a freshly computed checksum. A parent name longer than 256 UTF-16 units is
    /// cut, as the field holds no more.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(COOKIE);
        b[8..16].copy_from_slice(&self.data_offset.to_be_bytes());
        b[16..24].copy_from_slice(&self.table_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.header_version.to_be_bytes());
        b[28..32].copy_from_slice(&self.max_table_entries.to_be_bytes());
        b[32..36].copy_from_slice(&self.block_size.to_be_bytes());
        b[40..56].copy_from_slice(self.parent_unique_id.as_bytes());
        b[56..60].copy_from_slice(&self.parent_timestamp.0.to_be_bytes());
        let name = b[PARENT_NAME_AT..PARENT_NAME_AT + PARENT_NAME_BYTES].chunks_exact_mut(2);
        for (slot, unit) in name.zip(self.parent_unicode_name.encode_utf16()) {
            slot.copy_from_slice(&unit.to_be_bytes());
        }
        for (i, locator) in self.parent_locators.iter().enumerate() {
            let start = LOCATORS_AT + i * LOCATOR_SIZE;
            b[start..start + LOCATOR_SIZE].copy_from_slice(&locator.encode());
        }
        let checksum = ones_complement_checksum(&b, CHECKSUM_AT);
        b[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&checksum.to_be_bytes());
        b
    }

    pub fn sectors_per_block(&self) -> u32 {
        self.block_size / SECTOR_SIZE as u32
    }

    /// Bytes of the sector bitmap in front of each block: one bit per sector, sector-padded.
    pub fn bitmap_size(&self) -> u64 {
        bitmap_size(self.block_size)
    }

    /// BAT entries needed to cover `current_size`; entries beyond are ignored when reading.
    pub fn blocks_for(&self, current_size: u64) -> u64 {
        current_size.div_ceil(u64::from(self.block_size))
    }

    /// Bytes the BAT occupies on disk, padded to a sector.
    pub fn bat_bytes(&self) -> u64 {
        super::round_up_to_sector(u64::from(self.max_table_entries) * 4)
    }
}

/// Sector bitmap bytes for a block size: ceil(sectors / 8) rounded up to a sector.
pub fn bitmap_size(block_size: u32) -> u64 {
    super::round_up_to_sector(u64::from(block_size / SECTOR_SIZE as u32).div_ceil(8))
}

/// The parent unicode name (UTF-16BE, NUL-padded) of the header `raw` at `at` must decode:
/// parsing replaces what does not, which would hide the damage.
pub fn check_parent_name(raw: &[u8], at: u64) -> Result<(), FormatError> {
    let Some(field) = raw.get(PARENT_NAME_AT..PARENT_NAME_AT + PARENT_NAME_BYTES) else {
        return Err(FormatError::truncated(
            Structure::Header,
            at,
            raw.len(),
            HEADER_SIZE,
        ));
    };
    let units = field
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0);
    match char::decode_utf16(units).find_map(Result::err) {
        None => Ok(()),
        Some(bad) => Err(FormatError::new(
            ErrorKind::BadText,
            Structure::Header,
            "parent_unicode_name",
            at + PARENT_NAME_AT as u64,
            format_args!("the unpaired surrogate {:#06x}", bad.unpaired_surrogate()),
            "UTF-16BE text",
        )),
    }
}

/// Reserved bytes 768..1024 must be zero (`vhd-util check`).
pub fn reserved_bytes_are_zero(bytes: &[u8]) -> bool {
    bytes
        .get(768..HEADER_SIZE)
        .is_none_or(|r| r.iter().all(|&b| b == 0))
}

#[cfg(test)]
mod tests {
    use super::super::PlatformCode;
    use super::*;

    /// A vhd-tool style differencing header, built field by field.
    fn hand_built() -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(b"cxsparse"); // cookie
        b[8..16].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: unused
        b[16..24].copy_from_slice(&2048u64.to_be_bytes()); // table offset: vhd-tool's 2048
        b[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // header version
        b[28..32].copy_from_slice(&5120u32.to_be_bytes()); // max table entries (10 GiB)
        b[32..36].copy_from_slice(&0x0020_0000u32.to_be_bytes()); // block size 2 MiB
        b[40..56].copy_from_slice(&[0xAB; 16]); // parent unique id
        b[56..60].copy_from_slice(&7u32.to_be_bytes()); // parent time stamp
        for (i, unit) in "base.vhd".encode_utf16().enumerate() {
            b[64 + 2 * i..66 + 2 * i].copy_from_slice(&unit.to_be_bytes()); // UTF-16BE name
        }
        b[576..580].copy_from_slice(b"MacX"); // locator 0: platform code
        b[580..584].copy_from_slice(&512u32.to_be_bytes()); // data space (bytes)
        b[584..588].copy_from_slice(&15u32.to_be_bytes()); // data length
        b[592..600].copy_from_slice(&1536u64.to_be_bytes()); // data offset
        let sum = ones_complement_checksum(&b, 36);
        b[36..40].copy_from_slice(&sum.to_be_bytes()); // checksum
        b
    }

    #[test]
    fn parses_every_field_and_re_encodes_byte_exact() {
        let bytes = hand_built();
        let h = DynamicHeader::parse(&bytes, 512).unwrap();
        assert_eq!(h.table_offset, 2048);
        assert_eq!(h.max_table_entries, 5120);
        assert_eq!(h.block_size, 2 << 20);
        assert_eq!(h.parent_unique_id.as_bytes(), &[0xAB; 16]);
        assert_eq!(h.parent_unicode_name, "base.vhd");
        assert_eq!(h.parent_locators[0].code, PlatformCode::MACX);
        assert_eq!(h.parent_locators[0].data_offset, 1536);
        assert!(h.parent_locators[1..].iter().all(ParentLocator::is_unused));
        assert_eq!(h.bitmap_size(), 512);
        assert_eq!(h.bat_bytes(), 20480);
        assert_eq!(h.encode(), bytes);
    }

    #[test]
    fn rejects_bad_block_sizes_and_huge_tables_naming_the_field() {
        for (block_size, ok) in [
            (512, true),
            (4096, true),
            (3 << 20, false),
            (256, false),
            (1 << 22, false),
        ] {
            let mut h = DynamicHeader::new(1536, 1, 2 << 20);
            h.block_size = block_size;
            let parsed = DynamicHeader::parse(&h.encode(), 512);
            assert_eq!(parsed.is_ok(), ok, "block size {block_size}");
            if let Err(e) = parsed {
                assert_eq!((e.field, e.offset), ("block_size", 544));
            }
        }
        let h = DynamicHeader::new(1536, u32::MAX, 2 << 20);
        let e = DynamicHeader::parse(&h.encode(), 512).unwrap_err();
        assert_eq!(
            (e.kind, e.field),
            (ErrorKind::TooLarge, "max_table_entries")
        );
    }

    #[test]
    fn parent_name_must_be_utf16() {
        let mut raw = DynamicHeader::new(1536, 1, 2 << 20).encode();
        assert_eq!(check_parent_name(&raw, 512), Ok(()));
        raw[64..70].copy_from_slice(&[0, b'a', 0xD8, 0x00, 0, b'b']); // "a", lone high surrogate, "b"
        let e = check_parent_name(&raw, 512).unwrap_err();
        assert_eq!(
            (e.kind, e.field, e.offset),
            (ErrorKind::BadText, "parent_unicode_name", 576)
        );
        raw[66..70].copy_from_slice(&[0xD8, 0x3D, 0xDE, 0x00]); // a valid surrogate pair
        assert_eq!(check_parent_name(&raw, 512), Ok(()));
    }

    #[test]
    fn bitmap_sizes_round_to_sectors() {
        assert_eq!(bitmap_size(512), 512);
        assert_eq!(bitmap_size(512 * 1024), 512);
        assert_eq!(bitmap_size(2 << 20), 512);
    }
}
