//! The 512-byte hard disk footer (at EOF, and copied to offset 0 in sparse disks).

use uuid::Uuid;

use super::{
    ErrorKind, FOOTER_SIZE, FormatError, Geometry, Structure, VhdTimestamp,
    checksum::ones_complement_checksum,
};
use super::{be_u32, be_u64};

pub const COOKIE: &[u8; 8] = b"conectix";
/// Bit 1 of `features` is reserved and must be set.
pub const FEATURES_RESERVED: u32 = 0x0000_0002;
pub const FORMAT_VERSION: u32 = 0x0001_0000;
/// The data offset of a fixed disk; the spec says 0xFFFFFFFF and everyone writes 64 bits of ones.
pub const FIXED_DATA_OFFSET: u64 = u64::MAX;
/// Our creator application code: not `tap\0` (implies a batmap) nor `vpc `/`qemu` (CHS sizing).
pub const CREATOR_APP: [u8; 4] = *b"vsyn";
/// Creator version: major in the high 16 bits.
pub const CREATOR_VERSION: u32 = 0x0001_0000;
/// Host OS code `Wi2k`, which every reader accepts.
pub const HOST_OS_WINDOWS: u32 = 0x5769_326B;

const CHECKSUM_AT: usize = 64;
const HIDDEN_AT: usize = 85;

/// The disk type field. Only the three types in use are representable; the deprecated codes
/// are rejected at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskType {
    Fixed,
    Dynamic,
    Differencing,
}

impl DiskType {
    pub fn code(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }

    fn from_code(code: u32) -> Option<DiskType> {
        match code {
            2 => Some(DiskType::Fixed),
            3 => Some(DiskType::Dynamic),
            4 => Some(DiskType::Differencing),
            _ => None,
        }
    }

    /// Dynamic and differencing disks have a header, a BAT and blocks.
    pub fn is_sparse(self) -> bool {
        self != DiskType::Fixed
    }
}

/// A parsed footer. `checksum` is the value stored in the bytes it came from; [`Footer::encode`]
/// always writes a freshly computed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    pub features: u32,
    pub format_version: u32,
    pub data_offset: u64,
    pub timestamp: VhdTimestamp,
    pub creator_app: [u8; 4],
    pub creator_version: u32,
    pub creator_host_os: u32,
    pub original_size: u64,
    pub current_size: u64,
    pub geometry: Geometry,
    pub disk_type: DiskType,
    pub checksum: u32,
    pub unique_id: Uuid,
    pub saved_state: u8,
    /// blktap's use of the first reserved byte: the VDI is hidden (a snapshot parent).
    pub hidden: u8,
}

/// How a footer's stored checksum relates to its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumStatus {
    Valid,
    /// Early blktap toggled `hidden` without recomputing the checksum; libvhd accepts it.
    ValidIgnoringHidden,
}

impl Footer {
    /// A footer as vhdsync writes it: our creator, the spec's geometry, the caller's time
    /// stamp (the format core reads no clock).
    pub fn new(
        disk_type: DiskType,
        current_size: u64,
        unique_id: Uuid,
        timestamp: VhdTimestamp,
    ) -> Footer {
        Footer {
            features: FEATURES_RESERVED,
            format_version: FORMAT_VERSION,
            data_offset: match disk_type {
                DiskType::Fixed => FIXED_DATA_OFFSET,
                _ => super::FOOTER_SIZE as u64,
            },
            timestamp,
            creator_app: CREATOR_APP,
            creator_version: CREATOR_VERSION,
            creator_host_os: HOST_OS_WINDOWS,
            original_size: current_size,
            current_size,
            geometry: Geometry::for_size(current_size),
            disk_type,
            checksum: 0,
            unique_id,
            saved_state: 0,
            hidden: 0,
        }
    }

    /// Parse a footer. `bytes` must hold at least 511 bytes: pre-2004 images have a 511-byte
    /// footer, whose missing last byte is reserved and taken as zero. `at` is the absolute
    /// offset the bytes came from, for error messages.
    pub fn parse(bytes: &[u8], at: u64) -> Result<(Footer, ChecksumStatus), FormatError> {
        if bytes.len() < FOOTER_SIZE - 1 {
            return Err(FormatError::truncated(
                Structure::Footer,
                at,
                bytes.len(),
                FOOTER_SIZE,
            ));
        }
        let mut b = [0u8; FOOTER_SIZE];
        let n = bytes.len().min(FOOTER_SIZE);
        b[..n].copy_from_slice(&bytes[..n]);

        if &b[0..8] != COOKIE {
            return Err(FormatError::new(
                ErrorKind::BadCookie,
                Structure::Footer,
                "cookie",
                at,
                format_args!("{:?}", String::from_utf8_lossy(&b[0..8])),
                "\"conectix\"",
            ));
        }
        let stored = be_u32(&b, CHECKSUM_AT);
        let status = checksum_status(&b, stored).ok_or_else(|| {
            FormatError::new(
                ErrorKind::BadChecksum,
                Structure::Footer,
                "checksum",
                at + CHECKSUM_AT as u64,
                format_args!("{stored:#010x}"),
                format_args!("{:#010x}", ones_complement_checksum(&b, CHECKSUM_AT)),
            )
        })?;
        let disk_type_code = be_u32(&b, 60);
        let disk_type = DiskType::from_code(disk_type_code).ok_or_else(|| {
            FormatError::new(
                ErrorKind::BadValue,
                Structure::Footer,
                "disk_type",
                at + 60,
                disk_type_code,
                "2 (fixed), 3 (dynamic) or 4 (differencing)",
            )
        })?;
        let current_size = be_u64(&b, 48);
        if current_size > super::MAX_VIRTUAL_SIZE {
            return Err(FormatError::new(
                ErrorKind::TooLarge,
                Structure::Footer,
                "current_size",
                at + 48,
                current_size,
                format_args!("at most {} (2040 GiB)", super::MAX_VIRTUAL_SIZE),
            ));
        }
        let data_offset = be_u64(&b, 16);
        // A fixed disk written with the spec's 32-bit 0xFFFFFFFF is normalised to 64 bits.
        let data_offset = if disk_type == DiskType::Fixed && data_offset == 0xFFFF_FFFF {
            FIXED_DATA_OFFSET
        } else {
            data_offset
        };
        let footer = Footer {
            features: be_u32(&b, 8),
            format_version: be_u32(&b, 12),
            data_offset,
            timestamp: VhdTimestamp(be_u32(&b, 24)),
            creator_app: [b[28], b[29], b[30], b[31]],
            creator_version: be_u32(&b, 32),
            creator_host_os: be_u32(&b, 36),
            original_size: be_u64(&b, 40),
            current_size,
            geometry: Geometry::from_u32(be_u32(&b, 56)),
            disk_type,
            checksum: stored,
            unique_id: Uuid::from_bytes(b[68..84].try_into().unwrap_or_default()),
            saved_state: b[84],
            hidden: b[HIDDEN_AT],
        };
        if footer.disk_type.is_sparse() && !footer.data_offset.is_multiple_of(super::SECTOR_SIZE) {
            return Err(FormatError::new(
                ErrorKind::BadValue,
                Structure::Footer,
                "data_offset",
                at + 16,
                footer.data_offset,
                "a sector-aligned offset of the dynamic header",
            ));
        }
        Ok((footer, status))
    }

    /// Encode with a freshly computed checksum.
    pub fn encode(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[0..8].copy_from_slice(COOKIE);
        b[8..12].copy_from_slice(&self.features.to_be_bytes());
        b[12..16].copy_from_slice(&self.format_version.to_be_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.timestamp.0.to_be_bytes());
        b[28..32].copy_from_slice(&self.creator_app);
        b[32..36].copy_from_slice(&self.creator_version.to_be_bytes());
        b[36..40].copy_from_slice(&self.creator_host_os.to_be_bytes());
        b[40..48].copy_from_slice(&self.original_size.to_be_bytes());
        b[48..56].copy_from_slice(&self.current_size.to_be_bytes());
        b[56..60].copy_from_slice(&self.geometry.to_u32().to_be_bytes());
        b[60..64].copy_from_slice(&self.disk_type.code().to_be_bytes());
        b[68..84].copy_from_slice(self.unique_id.as_bytes());
        b[84] = self.saved_state;
        b[HIDDEN_AT] = self.hidden;
        let checksum = ones_complement_checksum(&b, CHECKSUM_AT);
        b[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&checksum.to_be_bytes());
        b
    }

    /// The creator application as text, e.g. `qemu`, `tap`, `caml`.
    pub fn creator_app_text(&self) -> String {
        String::from_utf8_lossy(&self.creator_app)
            .trim_end_matches(['\0', ' '])
            .to_string()
    }

    /// The creator host OS as text (`Wi2k`, `Mac `), or its hex code.
    pub fn creator_host_os_text(&self) -> String {
        let bytes = self.creator_host_os.to_be_bytes();
        if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            String::from_utf8_lossy(&bytes).to_string()
        } else {
            format!("{:#010x}", self.creator_host_os)
        }
    }

    /// True for blktap images: the only producer whose batmap may be trusted.
    pub fn is_blktap(&self) -> bool {
        &self.creator_app == b"tap\0"
    }
}

/// Reserved bytes 86..512 must be zero (`vhd-util check`); byte 85 is blktap's `hidden`.
pub fn reserved_bytes_are_zero(bytes: &[u8]) -> bool {
    bytes
        .get(HIDDEN_AT + 1..)
        .is_none_or(|r| r.iter().all(|&b| b == 0))
}

fn checksum_status(b: &[u8; FOOTER_SIZE], stored: u32) -> Option<ChecksumStatus> {
    if ones_complement_checksum(b, CHECKSUM_AT) == stored {
        return Some(ChecksumStatus::Valid);
    }
    let mut unhidden = *b;
    unhidden[HIDDEN_AT] = 0;
    let early_blktap = &b[28..32] == b"tap\0";
    (early_blktap && ones_complement_checksum(&unhidden, CHECKSUM_AT) == stored)
        .then_some(ChecksumStatus::ValidIgnoringHidden)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dynamic 16 MiB footer written field by field as qemu would, for a byte-exact check.
    fn qemu_style_footer_bytes() -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..8].copy_from_slice(b"conectix"); // cookie
        b[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit
        b[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // version 1.0
        b[16..24].copy_from_slice(&512u64.to_be_bytes()); // data offset: header at 512
        b[24..28].copy_from_slice(&0x2D1C_5A3Bu32.to_be_bytes()); // time stamp
        b[28..32].copy_from_slice(b"qemu"); // creator application
        b[32..36].copy_from_slice(&0x0005_0003u32.to_be_bytes()); // creator version 5.3
        b[36..40].copy_from_slice(b"Wi2k"); // creator host OS
        b[40..48].copy_from_slice(&(16u64 << 20).to_be_bytes()); // original size
        b[48..56].copy_from_slice(&(16u64 << 20).to_be_bytes()); // current size
        b[56..60].copy_from_slice(&0x01E1_0411u32.to_be_bytes()); // CHS 481/4/17
        b[60..64].copy_from_slice(&3u32.to_be_bytes()); // disk type: dynamic
        b[68..84].copy_from_slice(&[0x11; 16]); // unique id
        let sum = ones_complement_checksum(&b, 64);
        b[64..68].copy_from_slice(&sum.to_be_bytes()); // checksum
        b
    }

    #[test]
    fn parses_every_field_of_a_hand_built_footer() {
        let bytes = qemu_style_footer_bytes();
        let (f, status) = Footer::parse(&bytes, 0).unwrap();
        assert_eq!(status, ChecksumStatus::Valid);
        assert_eq!(f.features, 2);
        assert_eq!(f.data_offset, 512);
        assert_eq!(f.creator_app_text(), "qemu");
        assert_eq!(f.creator_host_os_text(), "Wi2k");
        assert_eq!(f.current_size, 16 << 20);
        assert_eq!(f.geometry.to_string(), "481/4/17");
        assert_eq!(f.disk_type, DiskType::Dynamic);
        assert_eq!(f.unique_id.as_bytes(), &[0x11; 16]);
        assert_eq!(f.encode(), bytes, "re-encoding is byte exact");
    }

    #[test]
    fn accepts_a_511_byte_footer() {
        let bytes = qemu_style_footer_bytes();
        assert!(Footer::parse(&bytes[..511], 1000).is_ok());
        let err = Footer::parse(&bytes[..510], 1000).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Truncated);
    }

    #[test]
    fn bad_cookie_and_checksum_name_field_and_offset() {
        let mut bytes = qemu_style_footer_bytes();
        bytes[70] ^= 1;
        let err = Footer::parse(&bytes, 4096).unwrap_err();
        assert_eq!(
            (err.kind, err.field, err.offset),
            (ErrorKind::BadChecksum, "checksum", 4160)
        );
        bytes[0] = b'C';
        let err = Footer::parse(&bytes, 4096).unwrap_err();
        assert_eq!((err.kind, err.offset), (ErrorKind::BadCookie, 4096));
        assert!(err.to_string().contains("conectix"));
    }

    #[test]
    fn early_blktap_hidden_toggle_is_tolerated() {
        let mut f = Footer::new(DiskType::Dynamic, 1 << 20, Uuid::nil(), VhdTimestamp(0));
        f.creator_app = *b"tap\0";
        let mut bytes = f.encode();
        bytes[HIDDEN_AT] = 1; // toggled without a new checksum
        let (parsed, status) = Footer::parse(&bytes, 0).unwrap();
        assert_eq!(status, ChecksumStatus::ValidIgnoringHidden);
        assert_eq!(parsed.hidden, 1);
    }

    #[test]
    fn fixed_disk_32_bit_data_offset_is_normalised() {
        let mut f = Footer::new(DiskType::Fixed, 1 << 20, Uuid::nil(), VhdTimestamp(0));
        f.data_offset = 0xFFFF_FFFF;
        let (parsed, _) = Footer::parse(&f.encode(), 0).unwrap();
        assert_eq!(parsed.data_offset, FIXED_DATA_OFFSET);
    }

    #[test]
    fn deprecated_disk_types_are_rejected() {
        let mut bytes =
            Footer::new(DiskType::Dynamic, 1 << 20, Uuid::nil(), VhdTimestamp(0)).encode();
        bytes[63] = 5;
        let sum = ones_complement_checksum(&bytes, 64);
        bytes[64..68].copy_from_slice(&sum.to_be_bytes());
        let err = Footer::parse(&bytes, 0).unwrap_err();
        assert_eq!((err.kind, err.field), (ErrorKind::BadValue, "disk_type"));
    }
}
