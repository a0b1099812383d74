//! The server side of the same messages: encoders for what a server sends, and bounded
//! decoders for what a client sends. The tests' servers are built on these, so the client is
//! checked against an independent reading of each message's layout.

use std::fmt;

use super::error::{NbdError, Phase};
use super::handshake::BlockSizes;
use super::wire::{
    Decoded, EXPORT_NAME_REPLY_ZEROES, GREETING_LEN, IHAVEOPT, INFO_BLOCK_SIZE,
    INFO_BLOCK_SIZE_LEN, INFO_EXPORT, INFO_EXPORT_LEN, MAX_STRING, NBD_MAGIC, OPTION_HEADER_LEN,
    OPTION_REPLY_MAGIC, REQUEST_LEN, REQUEST_MAGIC, ReplyCode, SIMPLE_REPLY_LEN,
    SIMPLE_REPLY_MAGIC, ServerError, be16, be32, be64,
};

/// The largest option data accepted from a client: an export name of the protocol's longest
/// string, its length, and a few information requests.
pub const MAX_OPTION_DATA: usize = MAX_STRING + 64;

/// The greeting: `NBDMAGIC`, `IHAVEOPT`, the handshake flags.
pub fn encode_greeting(handshake_flags: u16) -> [u8; GREETING_LEN] {
    let mut out = [0u8; GREETING_LEN];
    out[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..18].copy_from_slice(&handshake_flags.to_be_bytes());
    out
}

/// The client's 32 bits of flags.
pub fn decode_client_flags(input: &[u8]) -> Decoded<u32> {
    match input.get(..4) {
        Some(bytes) => Decoded::Done {
            value: be32(bytes, 0),
            consumed: 4,
        },
        None => Decoded::NeedMore(4 - input.len()),
    }
}

/// An option request. Its `Debug` hides the data, which may hold an export name.
#[derive(Clone, PartialEq, Eq)]
pub struct OptionRequest {
    pub option: u32,
    pub data: Vec<u8>,
}

impl fmt::Debug for OptionRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OptionRequest")
            .field("option", &self.option)
            .field("data_len", &self.data.len())
            .finish()
    }
}

pub fn decode_option(input: &[u8]) -> Result<Decoded<OptionRequest>, NbdError> {
    let Some(header) = input.get(..OPTION_HEADER_LEN) else {
        return Ok(Decoded::NeedMore(OPTION_HEADER_LEN - input.len()));
    };
    let option = be32(header, 8);
    let magic = be64(header, 0);
    if magic != IHAVEOPT {
        return Err(NbdError::protocol(
            Phase::Option(option),
            "option magic",
            0,
            format!("0x{magic:016x}, expected IHAVEOPT"),
        ));
    }
    let len = be32(header, 12) as usize;
    if len > MAX_OPTION_DATA {
        return Err(NbdError::protocol(
            Phase::Option(option),
            "option length",
            12,
            format!("{len} bytes, more than the {MAX_OPTION_DATA} allowed"),
        ));
    }
    let total = OPTION_HEADER_LEN + len;
    let Some(data) = input.get(OPTION_HEADER_LEN..total) else {
        return Ok(Decoded::NeedMore(total - input.len()));
    };
    Ok(Decoded::Done {
        value: OptionRequest {
            option,
            data: data.to_vec(),
        },
        consumed: total,
    })
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`. Its `Debug` hides the export name.
#[derive(Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub export_name: Vec<u8>,
    pub requests: Vec<u16>,
}

impl fmt::Debug for InfoRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InfoRequest")
            .field("export_name_len", &self.export_name.len())
            .field("requests", &self.requests)
            .finish()
    }
}

pub fn decode_info_request(option: u32, data: &[u8]) -> Result<InfoRequest, NbdError> {
    let bad = |field, at: usize, problem: String| {
        NbdError::protocol(
            Phase::Option(option),
            field,
            (OPTION_HEADER_LEN + at) as u64,
            problem,
        )
    };
    let name_len = data
        .get(..4)
        .map(|b| be32(b, 0) as usize)
        .ok_or_else(|| bad("data", 0, format!("{} bytes, too short", data.len())))?;
    if name_len > MAX_STRING || 4 + name_len + 2 > data.len() {
        return Err(bad(
            "export name length",
            0,
            format!("{name_len} in {} bytes of option data", data.len()),
        ));
    }
    let count = be16(data, 4 + name_len) as usize;
    let list = &data[4 + name_len + 2..];
    if list.len() != 2 * count {
        return Err(bad(
            "information request count",
            4 + name_len,
            format!("{count} requests in {} bytes", list.len()),
        ));
    }
    Ok(InfoRequest {
        export_name: data[4..4 + name_len].to_vec(),
        requests: list.chunks_exact(2).map(|c| be16(c, 0)).collect(),
    })
}

/// An option reply: header, then `payload`.
pub fn encode_option_reply(option: u32, code: ReplyCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + payload.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&code.to_wire().to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of an `NBD_REP_INFO` carrying `NBD_INFO_EXPORT`.
pub fn encode_info_export(size: u64, flags: u16) -> [u8; INFO_EXPORT_LEN] {
    let mut out = [0u8; INFO_EXPORT_LEN];
    out[0..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    out[2..10].copy_from_slice(&size.to_be_bytes());
    out[10..12].copy_from_slice(&flags.to_be_bytes());
    out
}

/// The payload of an `NBD_REP_INFO` carrying `NBD_INFO_BLOCK_SIZE`.
pub fn encode_info_block_size(sizes: BlockSizes) -> [u8; INFO_BLOCK_SIZE_LEN] {
    let mut out = [0u8; INFO_BLOCK_SIZE_LEN];
    out[0..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    out[2..6].copy_from_slice(&sizes.minimum.to_be_bytes());
    out[6..10].copy_from_slice(&sizes.preferred.to_be_bytes());
    out[10..14].copy_from_slice(&sizes.maximum.to_be_bytes());
    out
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, flags, and the reserved zeroes unless the client
/// set `NO_ZEROES`.
pub fn encode_export_name_reply(size: u64, flags: u16, zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + EXPORT_NAME_REPLY_ZEROES);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if zeroes {
        out.resize(out.len() + EXPORT_NAME_REPLY_ZEROES, 0);
    }
    out
}

/// A client's transmission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub handle: u64,
    pub offset: u64,
    pub len: u32,
}

/// A request header. Write payloads (which this client never sends) are not taken.
pub fn decode_request(input: &[u8]) -> Result<Decoded<Request>, NbdError> {
    let Some(bytes) = input.get(..REQUEST_LEN) else {
        return Ok(Decoded::NeedMore(REQUEST_LEN - input.len()));
    };
    let magic = be32(bytes, 0);
    if magic != REQUEST_MAGIC {
        return Err(NbdError::protocol(
            Phase::Transmission,
            "request magic",
            0,
            format!("0x{magic:08x}, expected 0x{REQUEST_MAGIC:08x}"),
        ));
    }
    Ok(Decoded::Done {
        value: Request {
            flags: be16(bytes, 4),
            command: be16(bytes, 6),
            handle: be64(bytes, 8),
            offset: be64(bytes, 16),
            len: be32(bytes, 24),
        },
        consumed: REQUEST_LEN,
    })
}

/// A simple reply header; `error` is `None` on success (the read's data follows it).
pub fn encode_simple_reply(handle: u64, error: Option<ServerError>) -> [u8; SIMPLE_REPLY_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_LEN];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.map_or(0, |e| e.0).to_be_bytes());
    out[8..16].copy_from_slice(&handle.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::wire::{OPT_GO, encode_info_request, encode_option};

    #[test]
    fn option_requests_decode_within_bounds() {
        let data = encode_info_request(b"disk", &[3, 0]);
        let bytes = encode_option(OPT_GO, &data);
        for cut in 0..bytes.len() {
            assert!(matches!(decode_option(&bytes[..cut]), Ok(Decoded::NeedMore(n)) if n > 0));
        }
        let Decoded::Done { value, consumed } = decode_option(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!((value.option, consumed), (OPT_GO, bytes.len()));
        let request = decode_info_request(OPT_GO, &value.data).unwrap();
        assert_eq!(request.export_name, b"disk");
        assert_eq!(request.requests, vec![3, 0]);
        assert!(!format!("{value:?} {request:?}").contains("disk"));

        let mut huge = bytes[..16].to_vec();
        huge[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_option(&huge).is_err());
        let mut bad_magic = bytes.clone();
        bad_magic[0] ^= 1;
        assert!(decode_option(&bad_magic).is_err());
    }

    #[test]
    fn malformed_info_requests_are_refused() {
        let good = encode_info_request(b"disk", &[3]);
        for data in [
            vec![],
            good[..3].to_vec(),
            good[..good.len() - 1].to_vec(),
            [good.clone(), vec![0]].concat(),
            encode_info_request(&[b'x'; 4097], &[]),
            [u32::MAX.to_be_bytes().to_vec(), vec![0; 8]].concat(),
        ] {
            assert!(decode_info_request(OPT_GO, &data).is_err(), "{data:?}");
        }
    }

    #[test]
    fn requests_need_their_magic() {
        let mut bytes = [0u8; REQUEST_LEN];
        assert!(decode_request(&bytes).is_err());
        bytes[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        assert!(matches!(
            decode_request(&bytes),
            Ok(Decoded::Done { consumed: 28, .. })
        ));
        assert_eq!(decode_request(&bytes[..10]).unwrap(), Decoded::NeedMore(18));
    }
}
