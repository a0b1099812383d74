//! A VHD stream read over NBD: the blocks an [`ExtentStream`] carries, read on several NBD
//! connections at once and handed out in stream order, as a [`ChunkStream`] for
//! [`import_stream`](super::import_stream).
//!
//! Each connection runs on its own task and is given batches of consecutive blocks in turn
//! (batch `k` to connection `k mod n`), so the reads move while the import is busy. At most
//! [`MAX_BATCHES_IN_FLIGHT`] batches of at most [`BATCH_BYTES`] are read ahead, whatever
//! the disk's size and the number of connections: memory stays bounded. Any failed read
//! fails the stream; nothing is retried (the cycle's own cleanup then applies). Dropping the
//! stream stops the connections' tasks.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::{ChunkStream, Phase, TransferError, TransferErrorKind, VdiOn, fail};
use crate::nbd::{NbdClient, NbdError};
use crate::stream::extents::{ExtentStream, Read, nonzero_mask};

/// The most block data one batch carries (one block at least).
pub const BATCH_BYTES: usize = 2 << 20;
/// Batches read ahead of the import, over all connections: with [`BATCH_BYTES`], at most
/// 24 MiB of block data held at once.
pub const MAX_BATCHES_IN_FLIGHT: usize = 12;
/// The import forwards chunks of at most this many bytes, so its queue holds little.
const FRAME_BYTES: usize = 256 << 10;

/// Consecutive blocks to read on one connection.
struct Batch {
    block_size: usize,
    /// Each block with the extents to mark (`None`: mark what is not zeros, a full's rule)
    /// and what to read.
    blocks: Vec<(u32, Option<u32>, Vec<Read>)>,
}

/// A batch read: each block's index, data and mask, and the bytes read.
struct BatchData {
    blocks: Vec<(u32, Bytes, u32)>,
    read: u64,
}

type Reply = oneshot::Sender<Result<BatchData, NbdError>>;

/// An NBD-backed VHD stream. See the module documentation.
pub struct NbdStream<'a> {
    source: VdiOn<'a>,
    layout: ExtentStream,
    /// Whether this is a full copy: the layout's extents read, the zero ones left unmarked.
    full: bool,
    /// The blocks still to hand to a connection, ascending.
    to_read: VecDeque<u32>,
    /// Batches under way, in stream order.
    in_flight: VecDeque<oneshot::Receiver<Result<BatchData, NbdError>>>,
    connections: Vec<mpsc::Sender<(Batch, Reply)>>,
    next_connection: usize,
    _tasks: JoinSet<()>,
    /// Frames ready to hand out.
    ready: VecDeque<Bytes>,
    state: State,
    stall_timeout: Duration,
    blocks_given: u32,
    /// Stream bytes handed out.
    yielded: u64,
    /// Disk bytes read over NBD.
    read: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Prelude,
    Blocks,
    Done,
}

impl<'a> NbdStream<'a> {
    /// The stream `layout` describes, read from `source` over `clients` (at least one). A
    /// full (`full`) marks what it reads that is not zeros; a delta marks every changed
    /// extent. Either reads only the extents the layout's map holds.
    pub fn new(
        source: VdiOn<'a>,
        layout: ExtentStream,
        full: bool,
        clients: Vec<NbdClient<TcpStream>>,
        stall_timeout: Duration,
    ) -> NbdStream<'a> {
        let mut tasks = JoinSet::new();
        let mut connections = Vec::new();
        for client in clients {
            let (sender, receiver) = mpsc::channel(MAX_BATCHES_IN_FLIGHT);
            tasks.spawn(serve_batches(client, receiver));
            connections.push(sender);
        }
        NbdStream {
            source,
            to_read: layout.blocks().collect(),
            layout,
            full,
            in_flight: VecDeque::new(),
            connections,
            next_connection: 0,
            _tasks: tasks,
            ready: VecDeque::new(),
            state: State::Prelude,
            stall_timeout,
            blocks_given: 0,
            yielded: 0,
            read: 0,
        }
    }

    pub fn total_len(&self) -> u64 {
        self.layout.total_len()
    }

    /// How many blocks the stream carries.
    pub fn block_count(&self) -> u32 {
        self.layout.block_count()
    }

    /// Disk bytes read over NBD so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    fn failed(&self, kind: TransferErrorKind) -> TransferError {
        fail(Phase::Export, self.source, Some(self.yielded), kind)
    }

    /// Hand batches to the connections until the read-ahead is full or nothing is left.
    async fn dispatch(&mut self) -> Result<(), TransferError> {
        if self.hand_out() {
            Ok(())
        } else {
            Err(self.failed(TransferErrorKind::Connection(
                "an NBD connection stopped after an earlier failure".into(),
            )))
        }
    }

    /// [`Self::dispatch`]'s work; false when a connection's task has stopped.
    fn hand_out(&mut self) -> bool {
        let block_size = self.layout.block_size() as usize;
        let per_batch = (BATCH_BYTES / block_size).max(1);
        while self.in_flight.len() < MAX_BATCHES_IN_FLIGHT && !self.to_read.is_empty() {
            let mut batch = Batch {
                block_size,
                blocks: Vec::new(),
            };
            while batch.blocks.len() < per_batch
                && let Some(index) = self.to_read.pop_front()
            {
                let mask = self.layout.changed_mask(index);
                let mark = (!self.full).then_some(mask);
                let reads = self.layout.reads(index, mask);
                batch.blocks.push((index, mark, reads));
            }
            let (reply, answer) = oneshot::channel();
            let connection = &self.connections[self.next_connection % self.connections.len()];
            self.next_connection += 1;
            if connection.try_send((batch, reply)).is_err() {
                return false;
            }
            self.in_flight.push_back(answer);
        }
        true
    }

    /// The next batch's frames into `ready`; false when every block was handed out.
    async fn next_batch(&mut self) -> Result<bool, TransferError> {
        self.dispatch().await?;
        let Some(answer) = self.in_flight.pop_front() else {
            return Ok(false);
        };
        let stalled = TransferErrorKind::Stall {
            after: self.stall_timeout,
        };
        let data = match tokio::time::timeout(self.stall_timeout, answer).await {
            Err(_) => return Err(self.failed(stalled)),
            Ok(Err(_)) => {
                return Err(self.failed(TransferErrorKind::Connection(
                    "an NBD connection's task ended before its reads".into(),
                )));
            }
            Ok(Ok(Err(e))) => return Err(self.failed(TransferErrorKind::Nbd(Box::new(e)))),
            Ok(Ok(Ok(data))) => data,
        };
        self.read += data.read;
        for (index, bytes, mask) in data.blocks {
            let frames = self
                .layout
                .block_frames(index, bytes, mask)
                .map_err(|e| self.failed(TransferErrorKind::Stream(e)))?;
            let [bitmap, data] = frames;
            self.ready.push_back(bitmap);
            let mut at = 0;
            while at < data.len() {
                let end = (at + FRAME_BYTES).min(data.len());
                self.ready.push_back(data.slice(at..end));
                at = end;
            }
            self.blocks_given += 1;
        }
        self.dispatch().await?;
        Ok(true)
    }
}

impl ChunkStream for NbdStream<'_> {
    type Error = TransferError;

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, TransferError> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                self.yielded += frame.len() as u64;
                return Ok(Some(frame));
            }
            match self.state {
                State::Prelude => {
                    self.state = State::Blocks;
                    self.dispatch().await?;
                    self.ready.push_back(self.layout.prelude());
                }
                State::Blocks => {
                    if !self.next_batch().await? {
                        self.state = State::Done;
                        let trailer = self
                            .layout
                            .trailer()
                            .map_err(|e| self.failed(TransferErrorKind::Stream(e)))?;
                        self.ready.push_back(trailer);
                    }
                }
                State::Done => return Ok(None),
            }
        }
    }

    fn blocks(&self) -> (u32, Option<u32>) {
        (self.blocks_given, Some(self.layout.block_count()))
    }
}

/// A connection's batch buffers, reused once the import has sent (and dropped) every block
/// of a batch: fresh 2 MiB buffers for each batch cost a page fault per 4 KiB, about as
/// much CPU as the copy itself. A buffer is only added when none is free, so there are
/// never more than the batches this connection has alive at once, which the read-ahead
/// bounds.
#[derive(Default)]
struct Buffers(Vec<BytesMut>);

impl Buffers {
    /// `len` zero bytes in a free buffer (emptied, so the batch's blocks can be split off).
    fn zeroed(&mut self, len: usize) -> &mut BytesMut {
        let free = self.0.iter_mut().position(|b| {
            b.clear();
            b.try_reclaim(len)
        });
        let at = free.unwrap_or_else(|| {
            self.0.push(BytesMut::with_capacity(len));
            self.0.len() - 1
        });
        let buffer = &mut self.0[at];
        // Zeros where the batch reads nothing: a block carries its whole data area.
        buffer.resize(len, 0);
        buffer
    }
}

/// One connection's task: read each batch it is given, answer, stop at the first failure
/// (the stream fails then, and no later read could be trusted on a broken connection).
async fn serve_batches(
    mut client: NbdClient<TcpStream>,
    mut batches: mpsc::Receiver<(Batch, Reply)>,
) {
    let mut buffers = Buffers::default();
    while let Some((batch, reply)) = batches.recv().await {
        let outcome = read_batch(&mut client, batch, &mut buffers).await;
        let failed = outcome.is_err();
        let _ = reply.send(outcome);
        if failed {
            return;
        }
    }
    let _ = client.disconnect().await;
}

async fn read_batch(
    client: &mut NbdClient<TcpStream>,
    batch: Batch,
    buffers: &mut Buffers,
) -> Result<BatchData, NbdError> {
    let block_size = batch.block_size;
    let len = block_size * batch.blocks.len();
    let buffer = buffers.zeroed(len);
    let mut read = 0;
    {
        let mut requests: Vec<(u64, &mut [u8])> = Vec::new();
        let mut rest: &mut [u8] = &mut buffer[..];
        for (_, _, reads) in &batch.blocks {
            let (block, tail) = rest.split_at_mut(block_size);
            rest = tail;
            let mut block: &mut [u8] = block;
            let mut consumed = 0usize;
            for r in reads {
                let skip = r.block_offset as usize - consumed;
                let (_, tail) = block.split_at_mut(skip);
                let (target, tail) = tail.split_at_mut(r.len as usize);
                requests.push((r.disk_offset, target));
                block = tail;
                consumed = r.block_offset as usize + r.len as usize;
                read += u64::from(r.len);
            }
        }
        client.read_many(&mut requests).await?;
    }
    let mut data = buffer.split_to(len).freeze();
    let mut blocks = Vec::with_capacity(batch.blocks.len());
    for (index, mark, _) in batch.blocks {
        let block = data.split_to(block_size);
        let mask = mark.unwrap_or_else(|| nonzero_mask(&block));
        blocks.push((index, block, mask));
    }
    Ok(BatchData { blocks, read })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_reused_once_its_blocks_are_dropped_and_always_comes_zeroed() {
        let mut buffers = Buffers::default();
        let first = buffers.zeroed(4096);
        first.fill(7);
        let at = first.as_ptr();
        let held = first.split_to(4096).freeze();
        // A block still on its way to the import: its memory is not handed out again.
        let second = buffers.zeroed(4096);
        assert_ne!(second.as_ptr(), at);
        assert!(second.iter().all(|b| *b == 0));
        second.fill(9);
        drop(second.split_to(4096).freeze());
        assert_eq!(buffers.0.len(), 2);
        drop(held);
        // Both are free now: the first is taken again, zeroed, and no buffer is added.
        let again = buffers.zeroed(4096);
        assert_eq!(again.as_ptr(), at);
        assert!(again.iter().all(|b| *b == 0));
        assert_eq!(buffers.0.len(), 2);
    }
}
