//! Parent locator entries (24 bytes each, eight in the dynamic header) and their payloads.

use std::fmt;

use super::{ErrorKind, FormatError, SECTOR_SIZE, Structure, be_u32, be_u64};

pub const LOCATOR_SIZE: usize = 24;

/// The platform code of a locator entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PlatformCode(pub u32);

impl PlatformCode {
    pub const NONE: PlatformCode = PlatformCode(0);
    /// Deprecated ANSI relative path.
    pub const WI2R: PlatformCode = PlatformCode(0x5769_3272);
    /// Deprecated ANSI absolute path.
    pub const WI2K: PlatformCode = PlatformCode(0x5769_326B);
    /// Relative Windows path, UTF-16 (little-endian in practice).
    pub const W2RU: PlatformCode = PlatformCode(0x5732_7275);
    /// Absolute Windows path, UTF-16 (little-endian in practice).
    pub const W2KU: PlatformCode = PlatformCode(0x5732_6B75);
    /// Mac OS alias blob.
    pub const MAC: PlatformCode = PlatformCode(0x4D61_6320);
    /// File URL, UTF-8.
    pub const MACX: PlatformCode = PlatformCode(0x4D61_6358);

    pub fn is_known(self) -> bool {
        [
            Self::NONE,
            Self::WI2R,
            Self::WI2K,
            Self::W2RU,
            Self::W2KU,
            Self::MAC,
            Self::MACX,
        ]
        .contains(&self)
    }

    /// Codes whose payload is a path we can decode and follow.
    pub fn is_path(self) -> bool {
        [Self::W2RU, Self::W2KU, Self::MACX, Self::WI2R, Self::WI2K].contains(&self)
    }
}

impl fmt::Display for PlatformCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return write!(f, "none");
        }
        let bytes = self.0.to_be_bytes();
        if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            write!(f, "{}", String::from_utf8_lossy(&bytes).trim_end())
        } else {
            write!(f, "{:#010x}", self.0)
        }
    }
}

/// One parent locator entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParentLocator {
    pub code: PlatformCode,
    /// Space reserved for the payload: sectors per the spec, bytes in practice.
    pub data_space: u32,
    /// Payload length in bytes.
    pub data_length: u32,
    pub reserved: u32,
    /// Absolute byte offset of the payload.
    pub data_offset: u64,
}

impl ParentLocator {
    pub fn parse(bytes: &[u8; LOCATOR_SIZE]) -> ParentLocator {
        ParentLocator {
            code: PlatformCode(be_u32(bytes, 0)),
            data_space: be_u32(bytes, 4),
            data_length: be_u32(bytes, 8),
            reserved: be_u32(bytes, 12),
            data_offset: be_u64(bytes, 16),
        }
    }

    pub fn encode(&self) -> [u8; LOCATOR_SIZE] {
        let mut b = [0u8; LOCATOR_SIZE];
        b[0..4].copy_from_slice(&self.code.0.to_be_bytes());
        b[4..8].copy_from_slice(&self.data_space.to_be_bytes());
        b[8..12].copy_from_slice(&self.data_length.to_be_bytes());
        b[12..16].copy_from_slice(&self.reserved.to_be_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_be_bytes());
        b
    }

    /// An unused entry: code none and every other field zero, as `vhd-util check` requires.
    pub fn is_unused(&self) -> bool {
        *self == ParentLocator::default()
    }

    /// Bytes reserved for the payload. The spec counts sectors but Virtual PC, Hyper-V, blktap
    /// and ocaml-vhd write bytes; blktap's rule tells them apart: below 512 is sectors, a
    /// multiple of 512 is bytes, anything else is invalid.
    pub fn reserved_bytes(&self, index: u8, at: u64) -> Result<u64, FormatError> {
        let space = u64::from(self.data_space);
        if space < SECTOR_SIZE {
            Ok(space * SECTOR_SIZE)
        } else if space.is_multiple_of(SECTOR_SIZE) {
            Ok(space)
        } else {
            Err(FormatError::new(
                ErrorKind::BadValue,
                Structure::ParentLocator(index),
                "data_space",
                at + 4,
                space,
                "a sector count below 512 or a byte count that is a multiple of 512",
            ))
        }
    }

    /// Decode a payload into a path. `MacX` is a UTF-8 `file://` URL (the scheme is removed);
    /// `W2ku`/`W2ru` are UTF-16, little-endian in practice with a big-endian fallback;
    /// `Wi2k`/`Wi2r` are ANSI. `at` is the payload's absolute offset, for errors.
    pub fn decode_path(&self, index: u8, payload: &[u8], at: u64) -> Result<String, FormatError> {
        let bad_text = |what: &str| {
            FormatError::new(
                ErrorKind::BadText,
                Structure::ParentLocator(index),
                "payload",
                at,
                format_args!("{} bytes that are not {what}", payload.len()),
                format_args!("a {what} path for platform code {}", self.code),
            )
        };
        let text = match self.code {
            PlatformCode::MACX => {
                let s = std::str::from_utf8(payload).map_err(|_| bad_text("UTF-8"))?;
                let s = s.trim_end_matches('\0');
                let path = s.strip_prefix("file://").unwrap_or(s);
                percent_encoding::percent_decode_str(path)
                    .decode_utf8()
                    .map_err(|_| bad_text("UTF-8"))?
                    .into_owned()
            }
            PlatformCode::W2KU | PlatformCode::W2RU => {
                decode_utf16_either(payload).ok_or_else(|| bad_text("UTF-16"))?
            }
            PlatformCode::WI2K | PlatformCode::WI2R => {
                payload.iter().map(|&b| char::from(b)).collect::<String>()
            }
            other => {
                return Err(FormatError::new(
                    ErrorKind::BadValue,
                    Structure::ParentLocator(index),
                    "platform_code",
                    at,
                    other,
                    "MacX, W2ku, W2ru, Wi2k or Wi2r",
                ));
            }
        };
        Ok(text.trim_end_matches('\0').to_string())
    }
}

/// UTF-16 that is little-endian in practice but big-endian per the spec; the first unit tells
/// which (ASCII text starts with a zero byte only when big-endian). An odd length or invalid
/// UTF-16 in that order is rejected: decoding the other order instead would turn damage into
/// a plausible but wrong path.
fn decode_utf16_either(bytes: &[u8]) -> Option<String> {
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    let units = |le: bool| {
        bytes.chunks_exact(2).map(move |c| {
            if le {
                u16::from_le_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], c[1]])
            }
        })
    };
    let looks_big_endian = bytes.first() == Some(&0) && bytes.get(1).is_some_and(|&b| b != 0);
    char::decode_utf16(units(!looks_big_endian))
        .collect::<Result<String, _>>()
        .ok()
}

/// Encode a path as UTF-16LE, the byte order every real producer uses for `W2ku`/`W2ru`.
pub fn encode_utf16le(path: &str) -> Vec<u8> {
    path.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_fields_are_big_endian_at_fixed_offsets() {
        let entry = ParentLocator {
            code: PlatformCode::W2RU,
            data_space: 512,
            data_length: 24,
            reserved: 0,
            data_offset: 0x1_0000_0600,
        };
        let bytes = entry.encode();
        assert_eq!(&bytes[0..4], b"W2ru"); // platform code
        assert_eq!(&bytes[4..8], &[0, 0, 2, 0]); // data space
        assert_eq!(&bytes[8..12], &[0, 0, 0, 24]); // data length
        assert_eq!(&bytes[16..24], &[0, 0, 0, 1, 0, 0, 6, 0]); // data offset
        assert_eq!(ParentLocator::parse(&bytes), entry);
    }

    #[test]
    fn data_space_in_sectors_or_bytes() {
        let mut l = ParentLocator {
            code: PlatformCode::MACX,
            data_space: 1,
            ..Default::default()
        };
        assert_eq!(l.reserved_bytes(0, 576), Ok(512));
        l.data_space = 4096;
        assert_eq!(l.reserved_bytes(0, 576), Ok(4096));
        l.data_space = 600;
        let err = l.reserved_bytes(2, 576).unwrap_err();
        assert_eq!(
            (err.field, err.structure),
            ("data_space", Structure::ParentLocator(2))
        );
    }

    #[test]
    fn decodes_every_path_encoding() {
        let macx = ParentLocator {
            code: PlatformCode::MACX,
            ..Default::default()
        };
        assert_eq!(
            macx.decode_path(0, b"file://./parent%20a.vhd\0\0", 0)
                .unwrap(),
            "./parent a.vhd"
        );
        let w2ru = ParentLocator {
            code: PlatformCode::W2RU,
            ..Default::default()
        };
        let le = encode_utf16le(".\\base.vhd");
        assert_eq!(w2ru.decode_path(1, &le, 0).unwrap(), ".\\base.vhd");
        let be: Vec<u8> = "base.vhd"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        assert_eq!(w2ru.decode_path(1, &be, 0).unwrap(), "base.vhd");
        let err = w2ru.decode_path(1, &[0x41], 99).unwrap_err();
        assert_eq!((err.kind, err.offset), (ErrorKind::BadText, 99));
        // A lone surrogate in little-endian text (read big-endian it would decode, wrongly).
        let mut lone = encode_utf16le(".\\b");
        lone.extend_from_slice(&[0x00, 0xD8]);
        lone.extend_from_slice(&encode_utf16le(".vhd"));
        let err = w2ru.decode_path(1, &lone, 99).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadText);
        let mac = ParentLocator {
            code: PlatformCode::MAC,
            ..Default::default()
        };
        assert_eq!(
            mac.decode_path(3, b"x", 0).unwrap_err().field,
            "platform_code"
        );
    }
}
