//! The transmission phase, client side, over bytes: `NBD_CMD_READ` and `NBD_CMD_DISC`
//! requests out, simple replies in.
//!
//! A simple reply does not say how much data follows it: only the request does. So the codec
//! keeps every read in flight by handle, refuses a reply whose handle matches none, and after
//! a successful reply header takes exactly the requested length as that read's data, handing
//! it out as it arrives ([`Reply::Data`]) so that the driver can copy it where it belongs, or
//! read it straight into place (see [`Transmission::data_due`]). Nothing is buffered here.
//!
//! Structured replies are never negotiated, so a structured (or extended) reply magic is an
//! error: xapi-nbd sends simple replies, and qemu-nbd only structured ones to clients that ask.

use std::collections::HashMap;
use std::ops::Range;

use super::error::{NbdError, Phase};
use super::handshake::ExportInfo;
use super::wire::{
    CMD_DISC, CMD_READ, Decoded, EXTENDED_REPLY_MAGIC, REQUEST_LEN, REQUEST_MAGIC,
    SIMPLE_REPLY_LEN, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, ServerError, be32, be64,
};

/// The most reads a [`Transmission`] keeps in flight at once, whatever it is asked for.
pub const MAX_IN_FLIGHT: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    offset: u64,
    len: u32,
}

/// The data still due for the read whose reply header arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataDue {
    pub handle: u64,
    /// Bytes of the read received so far: where the next ones go.
    pub at: u32,
    pub remaining: u32,
}

/// One step of the server's replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Data of the read `handle`: the input bytes in `data` go `at` bytes into the read's
    /// buffer. `complete` once the read's last byte arrived. A reply header with no data yet
    /// comes as an empty range.
    Data {
        handle: u64,
        at: u32,
        data: Range<usize>,
        complete: bool,
    },
    /// The server failed the read; no data follows, and the connection goes on.
    Failed {
        handle: u64,
        offset: u64,
        len: u32,
        error: ServerError,
    },
}

/// The client's transmission phase.
#[derive(Debug)]
pub struct Transmission {
    export: ExportInfo,
    max_in_flight: usize,
    in_flight: HashMap<u64, Pending>,
    next_handle: u64,
    data: Option<DataDue>,
    /// Bytes of the server's replies consumed so far, for error positions.
    position: u64,
    disconnected: bool,
}

impl Transmission {
    /// Transmission with `export`, keeping at most `max_in_flight` reads (1 to
    /// [`MAX_IN_FLIGHT`]) in flight.
    pub fn new(export: ExportInfo, max_in_flight: usize) -> Transmission {
        Transmission {
            export,
            max_in_flight: max_in_flight.clamp(1, MAX_IN_FLIGHT),
            in_flight: HashMap::new(),
            next_handle: 1,
            data: None,
            position: 0,
            disconnected: false,
        }
    }

    pub fn export(&self) -> &ExportInfo {
        &self.export
    }

    /// Keep at most `max_in_flight` reads (1 to [`MAX_IN_FLIGHT`]) in flight from now on.
    pub fn set_max_in_flight(&mut self, max_in_flight: usize) {
        self.max_in_flight = max_in_flight.clamp(1, MAX_IN_FLIGHT);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether another read may be sent now.
    pub fn can_send(&self) -> bool {
        !self.disconnected && self.in_flight.len() < self.max_in_flight
    }

    /// Whether a read of `len` bytes at `offset` is one this client may send: within the
    /// export, aligned to its minimum block size, not empty, and no longer than
    /// [`ExportInfo::max_request`].
    pub fn check_read(&self, offset: u64, len: u32) -> Result<(), NbdError> {
        let export = &self.export;
        let min = u64::from(export.min_block());
        let refuse = |why: String| {
            Err(NbdError::Request(format!(
                "read of {len} bytes at offset {offset}: {why}"
            )))
        };
        if len == 0 {
            return refuse("empty".into());
        }
        if len > export.max_request() {
            return refuse(format!(
                "longer than the {} bytes one request may ask for",
                export.max_request()
            ));
        }
        if !offset.is_multiple_of(min) || !u64::from(len).is_multiple_of(min) {
            return refuse(format!("not aligned to the export's {min}-byte blocks"));
        }
        if offset
            .checked_add(u64::from(len))
            .is_none_or(|end| end > export.size)
        {
            return refuse(format!("beyond the export's {} bytes", export.size));
        }
        Ok(())
    }

    /// An `NBD_CMD_READ` request, and the handle its reply will carry.
    pub fn encode_read(
        &mut self,
        offset: u64,
        len: u32,
    ) -> Result<(u64, [u8; REQUEST_LEN]), NbdError> {
        self.check_read(offset, len)?;
        if self.disconnected {
            return Err(NbdError::Request("read after NBD_CMD_DISC".into()));
        }
        if self.in_flight.len() >= self.max_in_flight {
            return Err(NbdError::Request(format!(
                "already {} reads in flight, the most allowed",
                self.in_flight.len()
            )));
        }
        let mut handle = self.next_handle;
        while self.in_flight.contains_key(&handle) {
            handle = handle.wrapping_add(1);
        }
        self.next_handle = handle.wrapping_add(1);
        self.in_flight.insert(handle, Pending { offset, len });
        Ok((handle, encode_request(CMD_READ, handle, offset, len)))
    }

    /// `NBD_CMD_DISC`: the server closes the connection, sending nothing more. Reads still in
    /// flight may never be answered.
    pub fn encode_disconnect(&mut self) -> [u8; REQUEST_LEN] {
        self.disconnected = true;
        let handle = self.next_handle;
        self.next_handle = handle.wrapping_add(1);
        encode_request(CMD_DISC, handle, 0, 0)
    }

    /// Where the data of the read being received goes, while some is due: the driver may read
    /// the next bytes from the connection straight into place (when it holds none of them
    /// already) and pass them to [`Transmission::decode`].
    pub fn data_due(&self) -> Option<DataDue> {
        self.data
    }

    /// Decode the next reply, or the next piece of a read's data, from `input`: bytes
    /// received from the server and not yet consumed.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded<Reply>, NbdError> {
        if let Some(due) = self.data {
            if input.is_empty() {
                return Ok(Decoded::NeedMore(due.remaining as usize));
            }
            let (reply, used) = self.take_data(due, 0, input.len());
            return Ok(self.consumed(used, reply));
        }
        let Some(header) = input.get(..SIMPLE_REPLY_LEN) else {
            // A wrong magic is reported as soon as it is complete, before the rest arrives.
            if input.len() >= 4 {
                self.check_magic(be32(input, 0))?;
            }
            return Ok(Decoded::NeedMore(SIMPLE_REPLY_LEN - input.len()));
        };
        self.check_magic(be32(header, 0))?;
        let error = be32(header, 4);
        let handle = be64(header, 8);
        let Some(pending) = self.in_flight.get(&handle).copied() else {
            return Err(NbdError::protocol(
                Phase::Transmission,
                "handle",
                self.position + 8,
                format!(
                    "{handle} answers no read in flight ({} in flight)",
                    self.in_flight.len()
                ),
            ));
        };
        if error != 0 {
            self.in_flight.remove(&handle);
            let reply = Reply::Failed {
                handle,
                offset: pending.offset,
                len: pending.len,
                error: ServerError(error),
            };
            return Ok(self.consumed(SIMPLE_REPLY_LEN, reply));
        }
        let due = DataDue {
            handle,
            at: 0,
            remaining: pending.len,
        };
        self.data = Some(due);
        let (reply, used) = self.take_data(due, SIMPLE_REPLY_LEN, input.len());
        Ok(self.consumed(used, reply))
    }

    /// The error for the server closing the connection with `buffered` bytes unconsumed.
    pub fn server_closed(&self, buffered: usize) -> NbdError {
        let context = if let Some(due) = self.data {
            let pending = self.in_flight.get(&due.handle).copied();
            let (offset, len) = pending.map_or((0, 0), |p| (p.offset, p.len));
            format!(
                "in the middle of the data of read handle {} (offset {offset}): {} of {len} bytes received",
                due.handle, due.at
            )
        } else if buffered > 0 {
            format!("in the middle of a reply header ({buffered} of {SIMPLE_REPLY_LEN} bytes)")
        } else if !self.in_flight.is_empty() {
            format!("with {} reads unanswered", self.in_flight.len())
        } else {
            "between requests".to_string()
        };
        NbdError::Closed {
            phase: Phase::Transmission,
            context,
        }
    }

    fn check_magic(&self, magic: u32) -> Result<(), NbdError> {
        let problem = match magic {
            SIMPLE_REPLY_MAGIC => return Ok(()),
            STRUCTURED_REPLY_MAGIC => {
                "a structured reply chunk, which this client never negotiated".to_string()
            }
            EXTENDED_REPLY_MAGIC => {
                "an extended-header reply, which this client never negotiated".to_string()
            }
            other => format!("0x{other:08x}, expected 0x{SIMPLE_REPLY_MAGIC:08x}"),
        };
        Err(NbdError::protocol(
            Phase::Transmission,
            "reply magic",
            self.position,
            problem,
        ))
    }

    /// Up to `due.remaining` data bytes from `input[start..end]`: the reply, and how many
    /// bytes of the input it used.
    fn take_data(&mut self, due: DataDue, start: usize, end: usize) -> (Reply, usize) {
        let n = (end - start).min(due.remaining as usize);
        let remaining = due.remaining - n as u32;
        let complete = remaining == 0;
        if complete {
            self.data = None;
            self.in_flight.remove(&due.handle);
        } else {
            self.data = Some(DataDue {
                at: due.at + n as u32,
                remaining,
                ..due
            });
        }
        let reply = Reply::Data {
            handle: due.handle,
            at: due.at,
            data: start..start + n,
            complete,
        };
        (reply, start + n)
    }

    fn consumed(&mut self, consumed: usize, value: Reply) -> Decoded<Reply> {
        self.position += consumed as u64;
        Decoded::Done { value, consumed }
    }
}

fn encode_request(command: u16, handle: u64, offset: u64, len: u32) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    // Command flags: none.
    out[6..8].copy_from_slice(&command.to_be_bytes());
    out[8..16].copy_from_slice(&handle.to_be_bytes());
    out[16..24].copy_from_slice(&offset.to_be_bytes());
    out[24..28].copy_from_slice(&len.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::handshake::BlockSizes;
    use crate::nbd::server::{decode_request, encode_simple_reply};
    use crate::nbd::wire::FLAG_HAS_FLAGS;

    const SIZE: u64 = 1 << 20;

    fn export(block_sizes: Option<BlockSizes>) -> ExportInfo {
        ExportInfo {
            size: SIZE,
            flags: FLAG_HAS_FLAGS,
            block_sizes,
        }
    }

    fn aligned() -> Transmission {
        Transmission::new(
            export(Some(BlockSizes {
                minimum: 512,
                preferred: 4096,
                maximum: 64 << 10,
            })),
            4,
        )
    }

    /// Decode `stream` fed `chunk` bytes at a time: the data each handle received (in
    /// place), the completed and failed handles, or the first error.
    #[derive(Debug, Default)]
    struct Received {
        data: HashMap<u64, Vec<u8>>,
        complete: Vec<u64>,
        failed: Vec<(u64, ServerError)>,
    }

    fn feed(tx: &mut Transmission, stream: &[u8], chunk: usize) -> Result<Received, NbdError> {
        let mut got = Received::default();
        let (mut buffered, mut fed) = (Vec::new(), 0);
        loop {
            match tx.decode(&buffered)? {
                Decoded::NeedMore(n) => {
                    assert!(n > 0);
                    if fed == stream.len() {
                        return Ok(got);
                    }
                    let take = chunk.min(stream.len() - fed);
                    buffered.extend_from_slice(&stream[fed..fed + take]);
                    fed += take;
                }
                Decoded::Done { value, consumed } => {
                    assert!(consumed > 0 || matches!(value, Reply::Data { .. }));
                    assert!(consumed <= buffered.len());
                    match value {
                        Reply::Data {
                            handle,
                            at,
                            data,
                            complete,
                        } => {
                            assert!(data.end <= consumed);
                            let place = got.data.entry(handle).or_default();
                            assert_eq!(place.len(), at as usize, "data out of order");
                            place.extend_from_slice(&buffered[data]);
                            if complete {
                                got.complete.push(handle);
                            }
                        }
                        Reply::Failed { handle, error, .. } => got.failed.push((handle, error)),
                    }
                    buffered.drain(..consumed);
                }
            }
        }
    }

    fn data_reply(handle: u64, data: &[u8]) -> Vec<u8> {
        [encode_simple_reply(handle, None).to_vec(), data.to_vec()].concat()
    }

    #[test]
    fn requests_are_well_formed_and_replies_land_by_handle_in_any_order() {
        let pattern = |seed: u8, len: usize| -> Vec<u8> {
            (0..len)
                .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                .collect()
        };
        for chunk in [1, 3, 16, 17, 700, 10_000] {
            let mut tx = aligned();
            let (a, request) = tx.encode_read(4096, 1024).unwrap();
            let Decoded::Done { value, consumed } = decode_request(&request).unwrap() else {
                panic!("partial request");
            };
            assert_eq!(consumed, REQUEST_LEN);
            assert_eq!(
                (
                    value.command,
                    value.flags,
                    value.handle,
                    value.offset,
                    value.len
                ),
                (CMD_READ, 0, a, 4096, 1024)
            );
            let (b, _) = tx.encode_read(0, 512).unwrap();
            let (c, _) = tx.encode_read(SIZE - 2048, 2048).unwrap();
            assert_eq!(tx.in_flight(), 3);
            let stream = [
                data_reply(c, &pattern(3, 2048)),
                encode_simple_reply(b, Some(ServerError::EIO)).to_vec(),
                data_reply(a, &pattern(1, 1024)),
            ]
            .concat();
            let got = feed(&mut tx, &stream, chunk).unwrap();
            assert_eq!(got.complete, vec![c, a]);
            assert_eq!(got.failed, vec![(b, ServerError::EIO)]);
            assert_eq!(got.data[&a], pattern(1, 1024));
            assert_eq!(got.data[&c], pattern(3, 2048));
            assert_eq!(tx.in_flight(), 0);
            assert_eq!(tx.data_due(), None);
        }
    }

    #[test]
    fn data_due_says_where_the_next_bytes_go() {
        let mut tx = aligned();
        let (h, _) = tx.encode_read(0, 1024).unwrap();
        let header = encode_simple_reply(h, None);
        let Decoded::Done { value, consumed } = tx.decode(&header).unwrap() else {
            panic!("header not taken");
        };
        assert_eq!(consumed, SIMPLE_REPLY_LEN);
        assert!(matches!(value, Reply::Data { data, complete: false, .. } if data.is_empty()));
        assert_eq!(
            tx.data_due(),
            Some(DataDue {
                handle: h,
                at: 0,
                remaining: 1024
            })
        );
        assert_eq!(tx.decode(&[]).unwrap(), Decoded::NeedMore(1024));
        // The driver read 1000 bytes straight into place and shows them to the codec.
        let Decoded::Done { value, .. } = tx.decode(&[7; 1000]).unwrap() else {
            panic!()
        };
        assert!(matches!(
            value,
            Reply::Data {
                at: 0,
                complete: false,
                ..
            }
        ));
        let e = tx.server_closed(0).to_string();
        assert!(
            e.contains("handle 1 (offset 0): 1000 of 1024 bytes received"),
            "{e}"
        );
        // Bytes past the data are left for the next reply.
        let Decoded::Done { value, consumed } = tx.decode(&[7; 100]).unwrap() else {
            panic!()
        };
        assert_eq!(consumed, 24);
        assert!(matches!(
            value,
            Reply::Data {
                at: 1000,
                complete: true,
                ..
            }
        ));
    }

    #[test]
    fn hostile_replies_are_refused_naming_field_handle_and_position() {
        let mut tx = aligned();
        let (h, _) = tx.encode_read(0, 512).unwrap();
        // Unknown handle, after one good reply: the position counts what came before.
        let stream = [data_reply(h, &[0; 512]), data_reply(h, &[0; 512])].concat();
        match feed(&mut tx, &stream, 64) {
            Err(NbdError::Protocol {
                phase: Phase::Transmission,
                field: "handle",
                offset,
                problem,
            }) => {
                assert_eq!(offset, 512 + 16 + 8);
                assert!(
                    problem.contains(&format!("{h} answers no read")),
                    "{problem}"
                );
            }
            other => panic!("{other:?}"),
        }
        for (magic, words) in [
            (STRUCTURED_REPLY_MAGIC, "structured reply"),
            (EXTENDED_REPLY_MAGIC, "extended-header"),
            (0x1234_5678, "0x12345678"),
        ] {
            let mut tx = aligned();
            tx.encode_read(0, 512).unwrap();
            // Refused from the magic alone, before the header is complete.
            match tx.decode(&magic.to_be_bytes()) {
                Err(
                    e @ NbdError::Protocol {
                        field: "reply magic",
                        offset: 0,
                        ..
                    },
                ) => {
                    assert!(e.to_string().contains(words), "{e}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn reads_outside_the_rules_are_not_sent() {
        let mut tx = aligned();
        for (offset, len, words) in [
            (0, 0, "empty"),
            (0, (64 << 10) + 512, "longer than the 65536"),
            (100, 512, "aligned"),
            (0, 700, "aligned"),
            (SIZE - 512, 1024, "beyond"),
            (u64::MAX - 511, 512, "beyond"),
        ] {
            let e = tx.encode_read(offset, len).unwrap_err().to_string();
            assert!(e.contains(words), "{offset}+{len}: {e}");
        }
        assert_eq!(tx.in_flight(), 0);
        for _ in 0..4 {
            assert!(tx.can_send());
            tx.encode_read(0, 512).unwrap();
        }
        assert!(!tx.can_send());
        assert!(
            tx.encode_read(0, 512)
                .unwrap_err()
                .to_string()
                .contains("in flight")
        );
        // Handles stay distinct.
        let mut tx = Transmission::new(export(None), MAX_IN_FLIGHT);
        let handles: std::collections::HashSet<u64> = (0..MAX_IN_FLIGHT)
            .map(|_| tx.encode_read(1, 3).unwrap().0)
            .collect();
        assert_eq!(handles.len(), MAX_IN_FLIGHT);
    }

    #[test]
    fn disconnect_is_a_request_and_ends_reading() {
        let mut tx = aligned();
        let request = tx.encode_disconnect();
        let Decoded::Done { value, .. } = decode_request(&request).unwrap() else {
            panic!()
        };
        assert_eq!((value.command, value.len), (CMD_DISC, 0));
        assert!(!tx.can_send());
        assert!(
            tx.encode_read(0, 512)
                .unwrap_err()
                .to_string()
                .contains("NBD_CMD_DISC")
        );
    }

    #[test]
    fn a_closed_connection_says_what_was_pending() {
        let mut tx = aligned();
        assert!(tx.server_closed(0).to_string().contains("between requests"));
        let (h, _) = tx.encode_read(0, 512).unwrap();
        assert!(
            tx.server_closed(0)
                .to_string()
                .contains("with 1 reads unanswered")
        );
        assert!(tx.server_closed(5).to_string().contains("(5 of 16 bytes)"));
        tx.decode(&encode_simple_reply(h, None)).unwrap();
        assert!(
            tx.server_closed(0)
                .to_string()
                .contains("0 of 512 bytes received")
        );
    }
}
