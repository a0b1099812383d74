//! The protocol's numbers (magics, option and reply codes, flags, commands, errors) and the
//! few big-endian readers the decoders share. All values are from the NBD protocol document
//! (`doc/proto.md` of github.com/NetworkBlockDevice/nbd); multi-byte fields are big-endian.

use std::fmt;

/// `NBDMAGIC`, the first 8 bytes a server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle greeting's second magic, and the magic of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The oldstyle greeting's second magic (`cliserv_magic`), refused by name.
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// The magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Structured reply chunks; never negotiated by this client, so refused by name.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Extended-header replies (64-bit lengths); never negotiated either.
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

/// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, 16 bits of handshake flags.
pub const GREETING_LEN: usize = 18;
/// Option reply header: magic, option, reply type, payload length.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Option request header: magic, option, data length.
pub const OPTION_HEADER_LEN: usize = 16;
/// Request: magic, command flags, type, handle, offset, length.
pub const REQUEST_LEN: usize = 28;
/// Simple reply: magic, error, handle.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// The reply to `NBD_OPT_EXPORT_NAME`: size and transmission flags, then 124 zero bytes unless
/// both sides agreed to `NO_ZEROES`.
pub const EXPORT_NAME_REPLY_LEN: usize = 10;
pub const EXPORT_NAME_REPLY_ZEROES: usize = 124;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Transmission flags.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;

// Option reply types; errors have bit 31 set.
pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const REP_ERROR_BIT: u32 = 1 << 31;

// Information types in `NBD_REP_INFO`.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;
/// `NBD_INFO_EXPORT`'s payload length, its 2-byte type included.
pub const INFO_EXPORT_LEN: usize = 12;
/// `NBD_INFO_BLOCK_SIZE`'s payload length, its 2-byte type included.
pub const INFO_BLOCK_SIZE_LEN: usize = 14;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_DISC: u16 = 2;

/// The longest string the protocol allows (export names, error messages): 4096 bytes.
pub const MAX_STRING: usize = 4096;
/// The largest option reply payload accepted: the longest string plus an `NBD_REP_INFO`'s
/// 2-byte type (`NBD_INFO_NAME` and `NBD_INFO_DESCRIPTION` carry one string each; every
/// other reply this client asks for is 14 bytes or less).
pub const MAX_OPTION_REPLY_PAYLOAD: usize = MAX_STRING + 2;

/// An option's name as the protocol document spells it, for errors.
pub fn option_name(option: u32) -> String {
    match option {
        OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME".into(),
        OPT_ABORT => "NBD_OPT_ABORT".into(),
        3 => "NBD_OPT_LIST".into(),
        OPT_STARTTLS => "NBD_OPT_STARTTLS".into(),
        OPT_INFO => "NBD_OPT_INFO".into(),
        OPT_GO => "NBD_OPT_GO".into(),
        8 => "NBD_OPT_STRUCTURED_REPLY".into(),
        other => format!("option {other}"),
    }
}

/// An option reply type, as a value to match on and show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyCode {
    Ack,
    Server,
    Info,
    MetaContext,
    /// `NBD_REP_ERR_UNSUP`: the server does not know the option.
    Unsupported,
    /// `NBD_REP_ERR_POLICY`: known, but forbidden by the server's policy.
    Policy,
    /// `NBD_REP_ERR_INVALID`: the request was malformed or out of sequence.
    Invalid,
    /// `NBD_REP_ERR_PLATFORM`: not supported on the server's platform or build.
    Platform,
    /// `NBD_REP_ERR_TLS_REQD`: the server wants TLS first.
    TlsRequired,
    /// `NBD_REP_ERR_UNKNOWN`: no such export.
    UnknownExport,
    /// `NBD_REP_ERR_SHUTDOWN`: the server is shutting down.
    Shutdown,
    /// `NBD_REP_ERR_BLOCK_SIZE_REQD`: the client must ask for block sizes.
    BlockSizeRequired,
    /// `NBD_REP_ERR_TOO_BIG`: the request or its reply is too large.
    TooBig,
    /// Any other error code (bit 31 set).
    OtherError(u32),
    /// Any other non-error code.
    Other(u32),
}

impl ReplyCode {
    pub fn from_wire(code: u32) -> ReplyCode {
        match code {
            REP_ACK => ReplyCode::Ack,
            2 => ReplyCode::Server,
            REP_INFO => ReplyCode::Info,
            4 => ReplyCode::MetaContext,
            c if c == REP_ERROR_BIT | 1 => ReplyCode::Unsupported,
            c if c == REP_ERROR_BIT | 2 => ReplyCode::Policy,
            c if c == REP_ERROR_BIT | 3 => ReplyCode::Invalid,
            c if c == REP_ERROR_BIT | 4 => ReplyCode::Platform,
            c if c == REP_ERROR_BIT | 5 => ReplyCode::TlsRequired,
            c if c == REP_ERROR_BIT | 6 => ReplyCode::UnknownExport,
            c if c == REP_ERROR_BIT | 7 => ReplyCode::Shutdown,
            c if c == REP_ERROR_BIT | 8 => ReplyCode::BlockSizeRequired,
            c if c == REP_ERROR_BIT | 9 => ReplyCode::TooBig,
            c if c & REP_ERROR_BIT != 0 => ReplyCode::OtherError(c),
            c => ReplyCode::Other(c),
        }
    }

    pub fn to_wire(self) -> u32 {
        match self {
            ReplyCode::Ack => REP_ACK,
            ReplyCode::Server => 2,
            ReplyCode::Info => REP_INFO,
            ReplyCode::MetaContext => 4,
            ReplyCode::Unsupported => REP_ERROR_BIT | 1,
            ReplyCode::Policy => REP_ERROR_BIT | 2,
            ReplyCode::Invalid => REP_ERROR_BIT | 3,
            ReplyCode::Platform => REP_ERROR_BIT | 4,
            ReplyCode::TlsRequired => REP_ERROR_BIT | 5,
            ReplyCode::UnknownExport => REP_ERROR_BIT | 6,
            ReplyCode::Shutdown => REP_ERROR_BIT | 7,
            ReplyCode::BlockSizeRequired => REP_ERROR_BIT | 8,
            ReplyCode::TooBig => REP_ERROR_BIT | 9,
            ReplyCode::OtherError(c) | ReplyCode::Other(c) => c,
        }
    }

    pub fn is_error(self) -> bool {
        self.to_wire() & REP_ERROR_BIT != 0
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ReplyCode::Ack => "NBD_REP_ACK",
            ReplyCode::Server => "NBD_REP_SERVER",
            ReplyCode::Info => "NBD_REP_INFO",
            ReplyCode::MetaContext => "NBD_REP_META_CONTEXT",
            ReplyCode::Unsupported => "NBD_REP_ERR_UNSUP",
            ReplyCode::Policy => "NBD_REP_ERR_POLICY",
            ReplyCode::Invalid => "NBD_REP_ERR_INVALID",
            ReplyCode::Platform => "NBD_REP_ERR_PLATFORM",
            ReplyCode::TlsRequired => "NBD_REP_ERR_TLS_REQD",
            ReplyCode::UnknownExport => "NBD_REP_ERR_UNKNOWN",
            ReplyCode::Shutdown => "NBD_REP_ERR_SHUTDOWN",
            ReplyCode::BlockSizeRequired => "NBD_REP_ERR_BLOCK_SIZE_REQD",
            ReplyCode::TooBig => "NBD_REP_ERR_TOO_BIG",
            ReplyCode::OtherError(c) => return write!(f, "error reply 0x{c:08x}"),
            ReplyCode::Other(c) => return write!(f, "reply type {c}"),
        };
        f.write_str(name)
    }
}

/// The error of a failed transmission request, as the server sent it (errno values fixed by
/// the protocol, whatever the server's platform).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerError(pub u32);

impl ServerError {
    pub const EPERM: ServerError = ServerError(1);
    pub const EIO: ServerError = ServerError(5);
    pub const ENOMEM: ServerError = ServerError(12);
    pub const EINVAL: ServerError = ServerError(22);
    pub const ENOSPC: ServerError = ServerError(28);
    pub const EOVERFLOW: ServerError = ServerError(75);
    pub const ENOTSUP: ServerError = ServerError(95);
    /// The server is shutting down; the client must disconnect.
    pub const ESHUTDOWN: ServerError = ServerError(108);
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            ServerError::EPERM => "NBD_EPERM (operation not permitted)",
            ServerError::EIO => "NBD_EIO (input/output error)",
            ServerError::ENOMEM => "NBD_ENOMEM (out of memory)",
            ServerError::EINVAL => "NBD_EINVAL (invalid argument)",
            ServerError::ENOSPC => "NBD_ENOSPC (no space left)",
            ServerError::EOVERFLOW => "NBD_EOVERFLOW (value too large)",
            ServerError::ENOTSUP => "NBD_ENOTSUP (not supported)",
            ServerError::ESHUTDOWN => "NBD_ESHUTDOWN (server shutting down)",
            ServerError(other) => return write!(f, "error {other}"),
        };
        f.write_str(name)
    }
}

/// What a decoder made of the bytes it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<T> {
    /// Nothing can be decoded until at least this many more bytes arrive.
    NeedMore(usize),
    /// A value, and how many bytes of the input it took (to drop from the front).
    Done { value: T, consumed: usize },
}

pub fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

pub fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

pub fn be64(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// An option request: `IHAVEOPT`, the option, the data's length, the data.
pub fn encode_option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OPTION_HEADER_LEN + data.len());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`: the export name, then the information
/// requests.
pub fn encode_info_request(export_name: &[u8], requests: &[u16]) -> Vec<u8> {
    let mut data = Vec::with_capacity(4 + export_name.len() + 2 + 2 * requests.len());
    data.extend_from_slice(&(export_name.len() as u32).to_be_bytes());
    data.extend_from_slice(export_name);
    data.extend_from_slice(&(requests.len() as u16).to_be_bytes());
    for request in requests {
        data.extend_from_slice(&request.to_be_bytes());
    }
    data
}

/// A string from the server (an error message), shown safely: invalid UTF-8 replaced, control
/// characters escaped, at most [`MAX_STRING`] bytes looked at.
pub fn display_string(bytes: &[u8]) -> String {
    let bytes = &bytes[..bytes.len().min(MAX_STRING)];
    String::from_utf8_lossy(bytes)
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_spell_their_names() {
        assert_eq!(&NBD_MAGIC.to_be_bytes(), b"NBDMAGIC");
        assert_eq!(&IHAVEOPT.to_be_bytes(), b"IHAVEOPT");
    }

    #[test]
    fn reply_codes_round_trip_and_name_themselves() {
        for wire in (0..12).chain((0..12).map(|c| REP_ERROR_BIT | c)) {
            let code = ReplyCode::from_wire(wire);
            assert_eq!(code.to_wire(), wire);
            assert_eq!(code.is_error(), wire & REP_ERROR_BIT != 0);
        }
        assert_eq!(
            ReplyCode::from_wire(0x8000_0005).to_string(),
            "NBD_REP_ERR_TLS_REQD"
        );
        assert_eq!(
            ReplyCode::from_wire(0x8000_00ff).to_string(),
            "error reply 0x800000ff"
        );
    }

    #[test]
    fn server_strings_are_shown_escaped_and_bounded() {
        assert_eq!(display_string(b"no\nexport\x1b"), "no\\nexport\\u{1b}");
        assert_eq!(display_string(&[b'a'; 10_000]).len(), MAX_STRING);
        assert_eq!(display_string(&[0xff, b'x']), "\u{fffd}x");
    }
}
