//! The client side of the fixed newstyle handshake, as a state machine over bytes.
//!
//! The driver feeds everything the server sent to [`ClientHandshake::decode`], drops the
//! bytes it says it consumed, sends what [`ClientHandshake::take_output`] hands out, and
//! acts on the events: upgrade to TLS on [`HandshakeEvent::StartTls`], start transmission on
//! [`HandshakeEvent::Ready`]. The exchange:
//!
//! 1. the greeting (`NBDMAGIC`, `IHAVEOPT`, handshake flags): fixed newstyle is required
//!    (it alone can carry TLS and errors); the client answers `FIXED_NEWSTYLE`, and
//!    `NO_ZEROES` when offered;
//! 2. with TLS, `NBD_OPT_STARTTLS` first: any error reply fails the handshake, so that a
//!    man in the middle cannot downgrade the session to plain text;
//! 3. `NBD_OPT_GO` asking for `NBD_INFO_BLOCK_SIZE` (this client honours the constraints),
//!    then `NBD_REP_INFO` replies (export size and flags, block sizes) and `NBD_REP_ACK`;
//!    a server that answers `NBD_REP_ERR_UNSUP` (older xapi-nbd, built on an OCaml library
//!    without `NBD_OPT_GO`) gets `NBD_OPT_EXPORT_NAME` instead, as the protocol asks;
//! 4. or, to only look at an export, `NBD_OPT_INFO` then `NBD_OPT_ABORT`.
//!
//! Bounds: option reply payloads above [`MAX_OPTION_REPLY_PAYLOAD`] bytes and more than
//! [`MAX_REPLIES_PER_OPTION`] replies to one option are refused before anything is buffered,
//! so a hostile server can make the driver hold at most one header and payload.

use std::fmt;

use super::error::{NbdError, Phase};
use super::wire::{
    Decoded, EXPORT_NAME_REPLY_LEN, EXPORT_NAME_REPLY_ZEROES, FLAG_C_FIXED_NEWSTYLE,
    FLAG_C_NO_ZEROES, FLAG_CAN_MULTI_CONN, FLAG_FIXED_NEWSTYLE, FLAG_HAS_FLAGS, FLAG_NO_ZEROES,
    FLAG_READ_ONLY, GREETING_LEN, IHAVEOPT, INFO_BLOCK_SIZE, INFO_BLOCK_SIZE_LEN, INFO_EXPORT,
    INFO_EXPORT_LEN, MAX_OPTION_REPLY_PAYLOAD, MAX_STRING, NBD_MAGIC, OLDSTYLE_MAGIC, OPT_ABORT,
    OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_STARTTLS, OPTION_REPLY_HEADER_LEN, OPTION_REPLY_MAGIC,
    ReplyCode, be16, be32, be64, display_string, encode_info_request, encode_option,
};

/// The most replies accepted to one option. A successful `NBD_OPT_GO` takes a few
/// `NBD_REP_INFO` (export, block sizes, name, description) and the final reply; anything
/// near this many is a server stalling the handshake.
pub const MAX_REPLIES_PER_OPTION: u32 = 32;

/// The largest read this client asks for in one request when the server advertises no
/// smaller maximum: 32 MiB, the size the protocol says no server should consider abusive.
pub const DEFAULT_MAX_REQUEST: u32 = 32 << 20;

/// The block size constraints a server advertised (`NBD_INFO_BLOCK_SIZE`), checked against
/// the protocol's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    /// Every request's offset and length are multiples of this (a power of two, 1 to 64 KiB).
    pub minimum: u32,
    /// Requests aligned to this are efficient (a power of two, at least 512).
    pub preferred: u32,
    /// The longest request the server takes; `u32::MAX` for no limit.
    pub maximum: u32,
}

/// What the handshake learnt about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    /// The export's size in bytes.
    pub size: u64,
    /// The transmission flags (`NBD_FLAG_*`).
    pub flags: u16,
    /// The server's block size constraints, or `None` when it sent none (always so after the
    /// `NBD_OPT_EXPORT_NAME` fallback, and from xapi-nbd, which needs 512-byte alignment
    /// without saying so).
    pub block_sizes: Option<BlockSizes>,
}

impl ExportInfo {
    pub fn read_only(&self) -> bool {
        self.flags & FLAG_READ_ONLY != 0
    }

    /// Whether the server says several connections to the export see the same data
    /// (`NBD_FLAG_CAN_MULTI_CONN`). Reads of an unchanging snapshot are safe either way.
    pub fn can_multi_conn(&self) -> bool {
        self.flags & FLAG_CAN_MULTI_CONN != 0
    }

    /// The alignment of every request's offset and length.
    pub fn min_block(&self) -> u32 {
        // At least 1 even for a hand-made `BlockSizes`: the codec divides by it.
        self.block_sizes.map_or(1, |b| b.minimum.max(1))
    }

    /// The longest read sent in one request: the server's maximum, at most
    /// [`DEFAULT_MAX_REQUEST`]. A multiple of [`ExportInfo::min_block`].
    pub fn max_request(&self) -> u32 {
        let server = self.block_sizes.map_or(u32::MAX, |b| b.maximum);
        let max = server.min(DEFAULT_MAX_REQUEST);
        let min = self.min_block();
        (max / min * min).max(min)
    }
}

/// What the client wants from the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Enter transmission with the export (`NBD_OPT_GO`).
    Transmission,
    /// Only learn about the export (`NBD_OPT_INFO`), then leave (`NBD_OPT_ABORT`).
    Probe,
}

/// What the driver has to do after a successful [`ClientHandshake::decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeEvent {
    /// Send the output (if any) and decode on.
    Continue,
    /// The server accepted `NBD_OPT_STARTTLS`: run the TLS handshake on the connection, call
    /// [`ClientHandshake::tls_started`], and go on over TLS.
    StartTls,
    /// The connection is in transmission phase with this export.
    Ready(ExportInfo),
    /// `NBD_OPT_INFO` answered and `NBD_OPT_ABORT` acknowledged (or the connection closed
    /// after it): close the connection.
    Probed(ExportInfo),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    /// Waiting for replies to this option.
    Replies(u32),
    /// `StartTls` was handed out; waiting for `tls_started`.
    Upgrading,
    ExportNameReply,
    /// The server refused this option with a final error reply.
    Refused(u32),
    Finished,
}

/// The client's handshake. Its `Debug` never shows the export name, which for XAPI carries
/// a session reference.
pub struct ClientHandshake {
    goal: Goal,
    tls: bool,
    state: State,
    export_name: Vec<u8>,
    no_zeroes: bool,
    out: Vec<u8>,
    export: Option<(u64, u16)>,
    block_sizes: Option<BlockSizes>,
    replies: u32,
    /// Bytes of the server's stream consumed so far, for error positions.
    position: u64,
}

impl fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientHandshake")
            .field("goal", &self.goal)
            .field("tls", &self.tls)
            .field("state", &self.state)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl ClientHandshake {
    /// A handshake for `export_name` (at most 4096 bytes of UTF-8 without NUL, as the
    /// protocol requires), over TLS when `tls` is set.
    pub fn new(export_name: &str, tls: bool, goal: Goal) -> Result<ClientHandshake, NbdError> {
        if export_name.len() > MAX_STRING {
            return Err(NbdError::Request(format!(
                "export name of {} bytes, more than the protocol's {MAX_STRING}",
                export_name.len()
            )));
        }
        if export_name.contains('\0') {
            return Err(NbdError::Request("export name contains a NUL byte".into()));
        }
        Ok(ClientHandshake {
            goal,
            tls,
            state: State::Greeting,
            export_name: export_name.as_bytes().to_vec(),
            no_zeroes: false,
            out: Vec::new(),
            export: None,
            block_sizes: None,
            replies: 0,
            position: 0,
        })
    }

    /// The bytes to send to the server now.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The phase the handshake is in, for errors about the connection under it.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Greeting => Phase::Greeting,
            State::Replies(option) => Phase::Option(option),
            State::Upgrading => Phase::Tls,
            State::ExportNameReply => Phase::Option(OPT_EXPORT_NAME),
            State::Refused(option) => Phase::Option(option),
            State::Finished => Phase::Transmission,
        }
    }

    /// Decode the next message from `input`, which must hold every byte received from the
    /// server and not yet consumed.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded<HandshakeEvent>, NbdError> {
        let decoded = match self.state {
            State::Greeting => self.greeting(input)?,
            State::Replies(option) => self.option_reply(option, input)?,
            State::ExportNameReply => self.export_name_reply(input)?,
            State::Upgrading | State::Refused(_) | State::Finished if input.is_empty() => {
                Decoded::NeedMore(1)
            }
            State::Upgrading => {
                return Err(self.error(
                    "data",
                    0,
                    format!("{} plain-text bytes before the TLS handshake", input.len()),
                ));
            }
            State::Finished | State::Refused(_) => {
                return Err(self.error(
                    "data",
                    0,
                    format!("{} bytes after the handshake ended", input.len()),
                ));
            }
        };
        if let Decoded::Done { consumed, .. } = decoded {
            self.position += consumed as u64;
        }
        Ok(decoded)
    }

    /// The TLS handshake is done: options go on over TLS.
    pub fn tls_started(&mut self) -> Result<(), NbdError> {
        if self.state != State::Upgrading {
            return Err(NbdError::Request(
                "TLS started without NBD_OPT_STARTTLS accepted".into(),
            ));
        }
        self.send_query();
        Ok(())
    }

    /// After the server refused an option (an [`NbdError::Refused`] from `decode`): the
    /// `NBD_OPT_ABORT` to send before closing, since the protocol wants a client to leave
    /// with that soft disconnect wherever it can. `None` at any other point (a protocol
    /// violation, a failed TLS handshake), where closing the connection is the way out.
    pub fn abort_after_refusal(&mut self) -> Option<Vec<u8>> {
        let State::Refused(_) = self.state else {
            return None;
        };
        self.state = State::Finished;
        Some(encode_option(OPT_ABORT, &[]))
    }

    /// The server closed the connection with `buffered` bytes unconsumed: the error saying
    /// where, or the probe's result when the server closed after `NBD_OPT_ABORT` without
    /// replying (which the protocol allows).
    pub fn server_closed(&self, buffered: usize) -> Result<HandshakeEvent, NbdError> {
        let context = match self.state {
            State::Replies(OPT_ABORT) => {
                if let Some(info) = self.export_info() {
                    return Ok(HandshakeEvent::Probed(info));
                }
                "after NBD_OPT_ABORT".to_string()
            }
            State::Greeting => {
                format!("before its greeting was complete ({buffered} of {GREETING_LEN} bytes)")
            }
            State::Replies(option) if self.replies == 0 && buffered == 0 => format!(
                "instead of replying to {} (for xapi-nbd: an unknown VDI or an invalid session in the export name)",
                super::wire::option_name(option)
            ),
            State::Replies(_) => format!(
                "in the middle of its replies ({} complete, {buffered} bytes of the next)",
                self.replies
            ),
            State::ExportNameReply => format!(
                "instead of accepting the export ({buffered} bytes of the reply; the server may not know it)"
            ),
            State::Upgrading => "before the TLS handshake".into(),
            State::Refused(_) => "after refusing the option".into(),
            State::Finished => "after the handshake".into(),
        };
        Err(NbdError::Closed {
            phase: self.phase(),
            context,
        })
    }

    fn error(&self, field: &'static str, at: usize, problem: impl Into<String>) -> NbdError {
        NbdError::protocol(self.phase(), field, self.position + at as u64, problem)
    }

    fn greeting(&mut self, input: &[u8]) -> Result<Decoded<HandshakeEvent>, NbdError> {
        let Some(bytes) = input.get(..GREETING_LEN) else {
            return Ok(Decoded::NeedMore(GREETING_LEN - input.len()));
        };
        let magic = be64(bytes, 0);
        if magic != NBD_MAGIC {
            return Err(self.error(
                "magic",
                0,
                format!("0x{magic:016x}, expected NBDMAGIC: not an NBD server"),
            ));
        }
        match be64(bytes, 8) {
            IHAVEOPT => {}
            OLDSTYLE_MAGIC => {
                return Err(self.error(
                    "magic",
                    8,
                    "oldstyle negotiation, which cannot carry an export name, TLS or errors",
                ));
            }
            other => {
                return Err(self.error("magic", 8, format!("0x{other:016x}, expected IHAVEOPT")));
            }
        }
        let flags = be16(bytes, 16);
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(self.error(
                "handshake flags",
                16,
                format!("0x{flags:04x} without FIXED_NEWSTYLE, which this client requires"),
            ));
        }
        // Unknown handshake flags are ignored, as the protocol asks.
        self.no_zeroes = flags & FLAG_NO_ZEROES != 0;
        let mut client_flags = FLAG_C_FIXED_NEWSTYLE;
        if self.no_zeroes {
            client_flags |= FLAG_C_NO_ZEROES;
        }
        self.out.extend_from_slice(&client_flags.to_be_bytes());
        if self.tls {
            self.send(OPT_STARTTLS, &[]);
        } else {
            self.send_query();
        }
        Ok(Decoded::Done {
            value: HandshakeEvent::Continue,
            consumed: GREETING_LEN,
        })
    }

    fn send(&mut self, option: u32, data: &[u8]) {
        self.out.extend_from_slice(&encode_option(option, data));
        self.state = State::Replies(option);
        self.replies = 0;
    }

    /// `NBD_OPT_GO` or `NBD_OPT_INFO`, asking for the block sizes.
    fn send_query(&mut self) {
        let option = match self.goal {
            Goal::Transmission => OPT_GO,
            Goal::Probe => OPT_INFO,
        };
        let data = encode_info_request(&self.export_name, &[INFO_BLOCK_SIZE]);
        self.send(option, &data);
    }

    fn option_reply(
        &mut self,
        option: u32,
        input: &[u8],
    ) -> Result<Decoded<HandshakeEvent>, NbdError> {
        let Some(header) = input.get(..OPTION_REPLY_HEADER_LEN) else {
            return Ok(Decoded::NeedMore(OPTION_REPLY_HEADER_LEN - input.len()));
        };
        let magic = be64(header, 0);
        if magic != OPTION_REPLY_MAGIC {
            return Err(self.error(
                "option reply magic",
                0,
                format!("0x{magic:016x}, expected 0x{OPTION_REPLY_MAGIC:016x}"),
            ));
        }
        let replied_to = be32(header, 8);
        if replied_to != option {
            return Err(self.error(
                "option",
                8,
                format!(
                    "a reply to {} while waiting for replies to {}",
                    super::wire::option_name(replied_to),
                    super::wire::option_name(option)
                ),
            ));
        }
        let code = ReplyCode::from_wire(be32(header, 12));
        let len = be32(header, 16) as usize;
        if len > MAX_OPTION_REPLY_PAYLOAD {
            return Err(self.error(
                "option reply length",
                16,
                format!("{len} bytes for {code}, more than the {MAX_OPTION_REPLY_PAYLOAD} allowed"),
            ));
        }
        let total = OPTION_REPLY_HEADER_LEN + len;
        let Some(payload) = input.get(OPTION_REPLY_HEADER_LEN..total) else {
            return Ok(Decoded::NeedMore(total - input.len()));
        };
        self.replies += 1;
        if self.replies > MAX_REPLIES_PER_OPTION {
            return Err(self.error(
                "option reply",
                0,
                format!("more than {MAX_REPLIES_PER_OPTION} replies to one option"),
            ));
        }
        let event = match option {
            OPT_STARTTLS => self.starttls_reply(code, payload, input.len() - total)?,
            OPT_GO | OPT_INFO => self.query_reply(option, code, payload)?,
            // Whatever the server says to an abort, the session is over.
            _ => {
                self.state = State::Finished;
                let info = self.export_info().ok_or_else(|| {
                    self.error("option", 8, "NBD_OPT_ABORT answered before any export")
                })?;
                HandshakeEvent::Probed(info)
            }
        };
        Ok(Decoded::Done {
            value: event,
            consumed: total,
        })
    }

    fn refused(&mut self, option: u32, code: ReplyCode, payload: &[u8]) -> NbdError {
        self.state = State::Refused(option);
        let mut message = display_string(payload);
        // Servers echo the export name (qemu: "export 'NAME' not present"); for XAPI it
        // carries the session, which must not reach logs.
        if let Ok(name) = std::str::from_utf8(&self.export_name)
            && !name.is_empty()
        {
            message = message.replace(name, "<export name>");
        }
        NbdError::Refused {
            option,
            code,
            message,
        }
    }

    fn starttls_reply(
        &mut self,
        code: ReplyCode,
        payload: &[u8],
        after: usize,
    ) -> Result<HandshakeEvent, NbdError> {
        match code {
            ReplyCode::Ack if !payload.is_empty() => Err(self.error(
                "option reply length",
                16,
                format!("{} bytes with NBD_REP_ACK", payload.len()),
            )),
            // Bytes already here came before TLS: nothing may, since what follows the
            // acknowledgement is the TLS handshake.
            ReplyCode::Ack if after > 0 => Err(self.error(
                "data",
                OPTION_REPLY_HEADER_LEN,
                format!("{after} plain-text bytes after NBD_OPT_STARTTLS was accepted"),
            )),
            ReplyCode::Ack => {
                self.state = State::Upgrading;
                Ok(HandshakeEvent::StartTls)
            }
            code if code.is_error() => Err(self.refused(OPT_STARTTLS, code, payload)),
            code => Err(self.error(
                "option reply type",
                12,
                format!("{code} to NBD_OPT_STARTTLS"),
            )),
        }
    }

    fn query_reply(
        &mut self,
        option: u32,
        code: ReplyCode,
        payload: &[u8],
    ) -> Result<HandshakeEvent, NbdError> {
        match code {
            ReplyCode::Info => {
                self.info(payload)?;
                Ok(HandshakeEvent::Continue)
            }
            ReplyCode::Ack if !payload.is_empty() => Err(self.error(
                "option reply length",
                16,
                format!("{} bytes with NBD_REP_ACK", payload.len()),
            )),
            ReplyCode::Ack => {
                let info = self.export_info().ok_or_else(|| {
                    self.error(
                        "option reply type",
                        12,
                        "NBD_REP_ACK before NBD_INFO_EXPORT",
                    )
                })?;
                if let Some(sizes) = info.block_sizes {
                    let floor = u64::from(sizes.preferred).min(info.size);
                    if u64::from(sizes.maximum) < floor {
                        return Err(self.error(
                            "maximum block size",
                            0,
                            format!(
                                "{} bytes, less than the smaller of the preferred block size and the export size ({floor})",
                                sizes.maximum
                            ),
                        ));
                    }
                }
                if option == OPT_GO {
                    self.state = State::Finished;
                    Ok(HandshakeEvent::Ready(info))
                } else {
                    self.send(OPT_ABORT, &[]);
                    Ok(HandshakeEvent::Continue)
                }
            }
            // Servers without NBD_OPT_GO: the protocol's fallback. It cannot report errors;
            // a server that does not know the export closes the connection.
            ReplyCode::Unsupported if option == OPT_GO => {
                let request = encode_option(OPT_EXPORT_NAME, &self.export_name);
                self.out.extend_from_slice(&request);
                self.state = State::ExportNameReply;
                Ok(HandshakeEvent::Continue)
            }
            code if code.is_error() => Err(self.refused(option, code, payload)),
            code => Err(self.error(
                "option reply type",
                12,
                format!("{code} to {}", super::wire::option_name(option)),
            )),
        }
    }

    /// One `NBD_REP_INFO`. Types this client did not ask for or does not know are skipped,
    /// as the protocol asks.
    fn info(&mut self, payload: &[u8]) -> Result<(), NbdError> {
        // Positions relative to this reply's header.
        let at = OPTION_REPLY_HEADER_LEN;
        if payload.len() < 2 {
            return Err(self.error(
                "option reply length",
                16,
                format!(
                    "{} bytes for NBD_REP_INFO, less than its type",
                    payload.len()
                ),
            ));
        }
        match be16(payload, 0) {
            INFO_EXPORT => {
                if payload.len() != INFO_EXPORT_LEN {
                    return Err(self.error(
                        "option reply length",
                        16,
                        format!(
                            "{} bytes for NBD_INFO_EXPORT, which has {INFO_EXPORT_LEN}",
                            payload.len()
                        ),
                    ));
                }
                let size = be64(payload, 2);
                let flags = be16(payload, 10);
                self.check_flags(flags, at + 10)?;
                self.export = Some((size, flags));
            }
            INFO_BLOCK_SIZE => {
                if payload.len() != INFO_BLOCK_SIZE_LEN {
                    return Err(self.error(
                        "option reply length",
                        16,
                        format!(
                            "{} bytes for NBD_INFO_BLOCK_SIZE, which has {INFO_BLOCK_SIZE_LEN}",
                            payload.len()
                        ),
                    ));
                }
                let sizes = BlockSizes {
                    minimum: be32(payload, 2),
                    preferred: be32(payload, 6),
                    maximum: be32(payload, 10),
                };
                self.check_block_sizes(sizes, at + 2)?;
                self.block_sizes = Some(sizes);
            }
            _ => {}
        }
        Ok(())
    }

    fn check_flags(&self, flags: u16, at: usize) -> Result<(), NbdError> {
        if flags & FLAG_HAS_FLAGS == 0 {
            return Err(self.error(
                "transmission flags",
                at,
                format!("0x{flags:04x} without NBD_FLAG_HAS_FLAGS, which is always set"),
            ));
        }
        Ok(())
    }

    /// The protocol's rules for `NBD_INFO_BLOCK_SIZE`, but for the maximum's floor, which
    /// depends on the export size (checked once both are known).
    fn check_block_sizes(&self, sizes: BlockSizes, at: usize) -> Result<(), NbdError> {
        let BlockSizes {
            minimum,
            preferred,
            maximum,
        } = sizes;
        if !minimum.is_power_of_two() || minimum > 1 << 16 {
            return Err(self.error(
                "minimum block size",
                at,
                format!("{minimum}: not a power of two from 1 to 65536"),
            ));
        }
        if !preferred.is_power_of_two() || preferred < minimum.max(512) {
            return Err(self.error(
                "preferred block size",
                at + 4,
                format!(
                    "{preferred}: not a power of two at least {}",
                    minimum.max(512)
                ),
            ));
        }
        if maximum != u32::MAX && (maximum < minimum || !maximum.is_multiple_of(minimum)) {
            return Err(self.error(
                "maximum block size",
                at + 8,
                format!("{maximum}: not a multiple of the minimum block size {minimum}"),
            ));
        }
        Ok(())
    }

    fn export_name_reply(&mut self, input: &[u8]) -> Result<Decoded<HandshakeEvent>, NbdError> {
        let total = EXPORT_NAME_REPLY_LEN
            + if self.no_zeroes {
                0
            } else {
                EXPORT_NAME_REPLY_ZEROES
            };
        let Some(bytes) = input.get(..total) else {
            return Ok(Decoded::NeedMore(total - input.len()));
        };
        let flags = be16(bytes, 8);
        self.check_flags(flags, 8)?;
        // The reserved bytes are not looked at: their content has no meaning. This reply
        // has no room for block sizes.
        let info = ExportInfo {
            size: be64(bytes, 0),
            flags,
            block_sizes: None,
        };
        self.export = Some((info.size, flags));
        self.block_sizes = None;
        self.state = State::Finished;
        Ok(Decoded::Done {
            value: HandshakeEvent::Ready(info),
            consumed: total,
        })
    }

    fn export_info(&self) -> Option<ExportInfo> {
        let (size, flags) = self.export?;
        Some(ExportInfo {
            size,
            flags,
            block_sizes: self.block_sizes,
        })
    }
}

#[cfg(test)]
mod tests;
