//! Validating a VHD stream in flight without keeping it: a [`StreamDecoder::validating`]
//! decoder is handed copies of the structures (footer, header, BAT, bitmaps) and skips the
//! block data, which is most of the stream and goes on untouched.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::TransferErrorKind;
use crate::stream::{StreamDecoder, StreamEvent};

pub(super) struct Validator {
    decoder: StreamDecoder,
    buf: BytesMut,
    ended: bool,
    /// The disk size the stream's footer announces.
    virtual_size: Option<u64>,
    /// The block size the stream's header announces.
    block_size: Option<u32>,
    /// The blocks the stream's BAT allocates, once read.
    allocated: Option<Vec<u32>>,
}

impl Validator {
    pub(super) fn new() -> Validator {
        Validator {
            decoder: StreamDecoder::validating(),
            buf: BytesMut::new(),
            ended: false,
            virtual_size: None,
            block_size: None,
            allocated: None,
        }
    }

    /// The exact stream length, once the BAT has been read.
    pub(super) fn total_len(&self) -> Option<u64> {
        self.decoder.total_len()
    }

    /// The size of the disk the stream describes, once its first footer has been read.
    pub(super) fn virtual_size(&self) -> Option<u64> {
        self.virtual_size
    }

    /// The block size and the indices of the blocks the BAT allocates (within the disk),
    /// once the BAT has been read.
    pub(super) fn allocated(&self) -> Option<(u32, &[u32])> {
        Some((self.block_size?, self.allocated.as_deref()?))
    }

    /// Blocks seen so far and blocks the BAT announces.
    pub(super) fn blocks(&self) -> (u32, Option<u32>) {
        (self.decoder.blocks_seen(), self.decoder.blocks_expected())
    }

    /// Decode what `chunk` completes. Returns the bytes of `chunk` past the stream's end.
    pub(super) fn push(&mut self, chunk: &[u8]) -> Result<usize, TransferErrorKind> {
        let mut rest = chunk;
        while !rest.is_empty() && !self.ended {
            if self.buf.is_empty() {
                let skipped = self.decoder.skip(rest.len() as u64) as usize;
                rest = &rest[skipped..];
                if rest.is_empty() {
                    break;
                }
            }
            // No more than the awaited structure needs, so the buffer empties at its end and
            // the next block's data can be skipped.
            let wanted = self
                .decoder
                .bytes_wanted(self.buf.len())
                .min(rest.len() as u64) as usize;
            self.buf.extend_from_slice(&rest[..wanted]);
            rest = &rest[wanted..];
            self.drain(false)?;
        }
        Ok(if self.ended {
            rest.len() + self.buf.len()
        } else {
            0
        })
    }

    pub(super) fn finish(&mut self) -> Result<(), TransferErrorKind> {
        if !self.ended {
            self.drain(true)?;
        }
        Ok(())
    }

    fn drain(&mut self, eof: bool) -> Result<(), TransferErrorKind> {
        loop {
            let event = if eof {
                self.decoder.decode_eof(&mut self.buf)
            } else {
                self.decoder.decode(&mut self.buf)
            };
            match event {
                Ok(Some(StreamEvent::End(_))) => {
                    self.ended = true;
                    return Ok(());
                }
                Ok(Some(StreamEvent::Footer(footer))) => {
                    self.virtual_size = Some(footer.current_size);
                }
                Ok(Some(StreamEvent::Header(header))) => {
                    self.block_size = Some(header.block_size);
                }
                Ok(Some(StreamEvent::Bat(bat))) => {
                    // Entries past the disk's end are never read as blocks.
                    let within = match (self.virtual_size, self.block_size) {
                        (Some(size), Some(block)) if block > 0 => {
                            u32::try_from(size.div_ceil(u64::from(block))).unwrap_or(u32::MAX)
                        }
                        _ => 0,
                    };
                    self.allocated = Some(bat.allocated(within).map(|(index, _)| index).collect());
                }
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.explain(e)),
            }
        }
    }

    /// XAPI reports a failure after its 200 header as an HTTP response written into the
    /// body; name that rather than the garbage it makes of the stream.
    fn explain(&self, error: crate::stream::StreamError) -> TransferErrorKind {
        match status_line_in(&self.buf) {
            Some(status_line) => TransferErrorKind::EmbeddedError { status_line },
            None => TransferErrorKind::Stream(error),
        }
    }
}

/// The first line of an `HTTP/1.x` status line found in `bytes`, if any.
pub(super) fn status_line_in(bytes: &[u8]) -> Option<String> {
    let at = bytes.windows(7).position(|w| w == b"HTTP/1.")?;
    let line = bytes[at..]
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    Some(String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_an_embedded_status_line() {
        let body = b"\x00\x01garbageHTTP/1.1 500 Internal Error\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            status_line_in(body).as_deref(),
            Some("HTTP/1.1 500 Internal Error")
        );
        assert_eq!(status_line_in(b"conectix HTTP"), None);
    }
}
