//! Feed a VHD stream from a reader into an [`ApplyTarget`]: the caller's thread reads and
//! decodes while a second thread writes, so the copy in from the source and the copy out to
//! the target overlap (two cores do the work of one copy each, as qemu-img's coroutines do).
//! At most `BLOCKS_IN_FLIGHT` decoded blocks wait between the two: memory stays bounded.

use std::io::Read;
use std::sync::mpsc;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::apply::{ApplyError, ApplyTarget};
use super::{StreamDecoder, StreamError, StreamEvent};
use crate::vhd::Footer;
use crate::vhd::header::bitmap_size;

/// Decoded blocks queued for the writer thread; each is at most one 2 MiB block.
const BLOCKS_IN_FLIGHT: usize = 4;
/// The most one read asks for.
const READ_CHUNK: u64 = 4 << 20;

/// What a fed stream amounted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedReport {
    /// The stream's length in bytes.
    pub stream_bytes: u64,
    /// Blocks written to the target.
    pub blocks: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The stream is malformed or truncated; the error names the stream offset.
    #[error("stream: {0}")]
    Stream(#[from] StreamError),
    #[error("reading the stream at byte {offset}: {source}")]
    Read { offset: u64, source: std::io::Error },
    /// Opening or writing the target failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The writer thread panicked: a bug, reported rather than propagated.
    #[error("the writer thread stopped unexpectedly")]
    WriterLost,
}

/// Decode the stream read from `input` and write its blocks to the target that `open_target`
/// returns for the stream's footer (called once, before any block). The target is finished
/// (made durable) only once the whole stream, final footer included, has been validated;
/// on error it is left as far as it got and not finished.
pub fn feed<R, T, F>(mut input: R, open_target: F) -> Result<FeedReport, FeedError>
where
    R: Read,
    T: ApplyTarget + Send,
    F: FnOnce(&Footer) -> Result<T, FeedError>,
{
    let mut open_target = Some(open_target);
    let mut decoder = StreamDecoder::new();
    let mut buf = BytesMut::new();
    let mut buffers = Buffers::default();
    let mut eof = false;
    let mut block_size = 0u64;
    // A block's bitmap and data: what each read buffer is sized for.
    let mut block_bytes = 0usize;
    std::thread::scope(|scope| {
        let mut writer: Option<Writer<'_, T>> = None;
        let outcome = (|| loop {
            // Between structures, before the decoder reserves room for the next one (and, were
            // the buffer still shared with queued blocks, allocates it afresh).
            if buf.is_empty() && block_bytes > 0 {
                buffers.reuse(&mut buf, block_bytes);
            }
            let event = if eof {
                decoder.decode_eof(&mut buf)?
            } else {
                decoder.decode(&mut buf)?
            };
            match event {
                Some(StreamEvent::Footer(footer)) => {
                    if let Some(open) = open_target.take() {
                        writer = Some(Writer::spawn(scope, open(&footer)?));
                    }
                }
                Some(StreamEvent::Header(header)) => {
                    block_size = u64::from(header.block_size);
                    block_bytes = (bitmap_size(header.block_size) + block_size) as usize;
                }
                Some(StreamEvent::Block {
                    index,
                    bitmap,
                    data,
                }) => {
                    if let Some(writer) = &writer {
                        writer.send(u64::from(index) * block_size, bitmap, data)?;
                    }
                }
                Some(StreamEvent::End(_)) => return Ok(decoder.position()),
                Some(_) => {}
                // decode_eof reports a truncated stream itself; this is a safety net.
                None if eof => {
                    return Err(FeedError::Read {
                        offset: decoder.position(),
                        source: std::io::ErrorKind::UnexpectedEof.into(),
                    });
                }
                None => {
                    // Read straight into the decoder's buffer, no more than the structure it
                    // awaits: the buffer empties at each block's end, so the decoder's next
                    // reserve reuses it without moving a leftover tail.
                    let filled = buf.len();
                    let want = decoder.bytes_wanted(filled).min(READ_CHUNK) as usize;
                    buf.resize(filled + want, 0);
                    let n = read_some(&mut input, &mut buf[filled..]).map_err(|source| {
                        FeedError::Read {
                            offset: decoder.position() + filled as u64,
                            source,
                        }
                    })?;
                    buf.truncate(filled + n);
                    eof = n == 0;
                }
            }
        })();
        match (outcome, writer) {
            (Ok(stream_bytes), Some(writer)) => {
                let blocks = writer.finish()?;
                Ok(FeedReport {
                    stream_bytes,
                    blocks,
                })
            }
            (Ok(stream_bytes), None) => Ok(FeedReport {
                stream_bytes,
                blocks: 0,
            }),
            // The writer's own error explains a failed send better than the send does.
            (Err(FeedError::WriterLost), Some(writer)) => Err(writer.abandon()),
            (Err(e), writer) => {
                drop(writer.map(Writer::abandon));
                Err(e)
            }
        }
    })
}

fn read_some(input: &mut impl Read, into: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match input.read(into) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// The read buffers. Blocks go to the writer as slices of the buffer they were read into, so
/// a buffer stays shared until the writer has written every block in it; reading into a
/// fresh allocation each time would cost a page fault and a kernel-zeroed page per 4 KiB
/// (measured: twice qemu-img's system time per GiB), so at each block's start the reader
/// takes back a buffer the writer is done with. At most `BLOCKS_IN_FLIGHT + 2` are ever in
/// use: queued, being written, being read.
#[derive(Default)]
struct Buffers {
    /// Buffers handed over with blocks that may still be queued or being written, with the
    /// size each was allocated with.
    lent: Vec<(BytesMut, usize)>,
    /// The size the reader's current buffer was allocated with (0: not known, never reused).
    current: usize,
}

impl Buffers {
    /// Make the empty `buf` one with room for `want` bytes that no block still uses.
    fn reuse(&mut self, buf: &mut BytesMut, want: usize) {
        if buf.try_reclaim(want) {
            return;
        }
        // Buffers too small for what the stream now needs (its header's) are let go.
        self.lent.retain(|(_, size)| *size >= want);
        let (spare, size) = match self.lent.iter_mut().position(|(b, _)| b.try_reclaim(want)) {
            Some(free) => self.lent.swap_remove(free),
            None => (BytesMut::with_capacity(want), want),
        };
        let lent = std::mem::replace(buf, spare);
        let lent_size = std::mem::replace(&mut self.current, size);
        if self.lent.len() < BLOCKS_IN_FLIGHT + 2 {
            self.lent.push((lent, lent_size));
        }
    }
}

/// A block on its way to the writer.
struct BlockWrite {
    offset: u64,
    bitmap: Bytes,
    data: Bytes,
}

/// The writer thread and the queue to it. The thread hands the target back when the queue
/// closes, so that only a fully validated stream gets its target finished.
struct Writer<'scope, T> {
    queue: mpsc::SyncSender<BlockWrite>,
    thread: std::thread::ScopedJoinHandle<'scope, Result<(T, u32), ApplyError>>,
}

impl<'scope, T: ApplyTarget + Send + 'scope> Writer<'scope, T> {
    fn spawn<'env>(scope: &'scope std::thread::Scope<'scope, 'env>, mut target: T) -> Self {
        let (queue, blocks) = mpsc::sync_channel::<BlockWrite>(BLOCKS_IN_FLIGHT);
        let thread = scope.spawn(move || {
            let mut written = 0u32;
            for block in blocks {
                target.write_block(block.offset, &block.bitmap, &block.data)?;
                written += 1;
            }
            Ok((target, written))
        });
        Writer { queue, thread }
    }

    /// Queue a block's write.
    fn send(&self, offset: u64, bitmap: Bytes, data: Bytes) -> Result<(), FeedError> {
        self.queue
            .send(BlockWrite {
                offset,
                bitmap,
                data,
            })
            .map_err(|_| FeedError::WriterLost)
    }

    /// Close the queue and wait for every queued write.
    fn join(self) -> Result<(T, u32), FeedError> {
        drop(self.queue);
        match self.thread.join() {
            Ok(result) => Ok(result?),
            Err(_) => Err(FeedError::WriterLost),
        }
    }

    /// Wait for the writes, then make them durable.
    fn finish(self) -> Result<u32, FeedError> {
        let (mut target, written) = self.join()?;
        target.finish()?;
        Ok(written)
    }

    /// Stop after the queued writes without finishing the target; the writer's error if it
    /// had one.
    fn abandon(self) -> FeedError {
        match self.join() {
            Err(e) => e,
            Ok(_) => FeedError::WriterLost,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use uuid::Uuid;

    use super::*;
    use crate::stream::EncodeParams;
    use crate::stream::test_support::{encode_to_vec, pattern};
    use crate::vhd::{BlockSet, VhdTimestamp};

    const BLOCK: usize = 4096;

    /// A block write the probe saw: guest offset and data.
    type Seen = (u64, Vec<u8>);

    /// Records what reaches the target; `fail_at` makes the n-th write fail.
    #[derive(Clone, Default)]
    struct Probe {
        writes: Arc<Mutex<Vec<Seen>>>,
        finished: Arc<Mutex<bool>>,
        fail_at: Option<usize>,
    }

    impl ApplyTarget for Probe {
        fn virtual_size(&self) -> u64 {
            1 << 20
        }
        fn write_block(&mut self, offset: u64, _: &[u8], data: &[u8]) -> Result<(), ApplyError> {
            let mut writes = self.writes.lock().unwrap();
            if self.fail_at == Some(writes.len()) {
                return Err(ApplyError::Io {
                    path: "probe".into(),
                    op: "write",
                    source: std::io::Error::other("disk on fire"),
                });
            }
            writes.push((offset, data.to_vec()));
            Ok(())
        }
        fn finish(&mut self) -> Result<(), ApplyError> {
            *self.finished.lock().unwrap() = true;
            Ok(())
        }
    }

    fn stream(blocks: &[u32]) -> Vec<u8> {
        let mut set = BlockSet::new(256);
        for &b in blocks {
            set.insert(b);
        }
        let mut params = EncodeParams::new(1 << 20, Uuid::from_u128(1), VhdTimestamp(5), set);
        params.block_size = BLOCK as u32;
        encode_to_vec(params)
    }

    #[test]
    fn writes_every_block_at_its_offset_then_finishes() {
        let probe = Probe::default();
        let bytes = stream(&[0, 7, 255]);
        let report = feed(&bytes[..], |footer| {
            assert_eq!(footer.current_size, 1 << 20);
            Ok(probe.clone())
        })
        .unwrap();
        assert_eq!(report.blocks, 3);
        assert_eq!(report.stream_bytes, bytes.len() as u64);
        let writes = probe.writes.lock().unwrap();
        let offsets: Vec<u64> = writes.iter().map(|w| w.0).collect();
        assert_eq!(offsets, [0, 7 * BLOCK as u64, 255 * BLOCK as u64]);
        assert_eq!(writes[1].1, pattern(7, BLOCK));
        assert!(*probe.finished.lock().unwrap());
    }

    #[test]
    fn a_truncated_stream_is_an_error_and_the_target_is_not_finished() {
        let probe = Probe::default();
        let bytes = stream(&[1, 2, 3]);
        for cut in [100, 3000, bytes.len() - 600, bytes.len() - 1] {
            let err = feed(&bytes[..cut], |_| Ok(probe.clone())).unwrap_err();
            assert!(matches!(err, FeedError::Stream(_)), "cut {cut}: {err}");
            assert!(!*probe.finished.lock().unwrap(), "cut {cut}");
        }
    }

    #[test]
    fn a_write_error_stops_the_feed_and_is_reported() {
        let probe = Probe {
            fail_at: Some(1),
            ..Probe::default()
        };
        let bytes = stream(&(0..64).collect::<Vec<_>>());
        let err = feed(&bytes[..], |_| Ok(probe.clone())).unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert!(!*probe.finished.lock().unwrap());
    }

    #[test]
    fn a_read_error_names_the_offset() {
        struct Broken(usize);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("link down"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(0);
                self.0 -= n;
                Ok(n)
            }
        }
        let err = feed(Broken(0), |_| Ok(Probe::default())).unwrap_err();
        assert!(matches!(err, FeedError::Read { offset: 0, .. }), "{err}");
    }
}
