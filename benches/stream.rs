//! Stream encode, decode and apply, in memory: a 256 MiB disk with every block allocated,
//! so the figures are the codec's and the apply pipeline's own cost, without a disk.

use std::io::Cursor;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio_util::codec::Decoder;
use uuid::Uuid;
use vhdsync::stream::apply::{ApplyError, ApplyTarget};
use vhdsync::stream::{EncodeParams, StreamDecoder, StreamEncoder, StreamError, StreamEvent, feed};
use vhdsync::vhd::{BlockSet, DEFAULT_BLOCK_SIZE, VhdTimestamp};

const DISK: u64 = 256 << 20;
const BLOCKS: u32 = (DISK / DEFAULT_BLOCK_SIZE as u64) as u32;
/// What one read from a socket or pipe typically hands the decoder.
const CHUNK: usize = 1 << 20;

fn encoder() -> StreamEncoder {
    StreamEncoder::new(EncodeParams::new(
        DISK,
        Uuid::from_u128(1),
        VhdTimestamp(0),
        BlockSet::full(BLOCKS),
    ))
    .unwrap()
}

fn block() -> Bytes {
    Bytes::from(
        (0..DEFAULT_BLOCK_SIZE)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn encode(block: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    encoder()
        .into_frames(move |_| Ok::<Bytes, StreamError>(block.clone()))
        .map(Result::unwrap)
}

/// A disk in memory, as apply's target.
struct MemoryDisk(Vec<u8>);

impl ApplyTarget for MemoryDisk {
    fn virtual_size(&self) -> u64 {
        self.0.len() as u64
    }
    fn write_block(&mut self, offset: u64, _present: &[u8], data: &[u8]) -> Result<(), ApplyError> {
        let at = offset as usize;
        self.0[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn finish(&mut self) -> Result<(), ApplyError> {
        Ok(())
    }
}

fn bench_stream(c: &mut Criterion) {
    let block = block();
    let stream: Vec<u8> = encode(&block).flat_map(|f| f.to_vec()).collect();
    let stream = Bytes::from(stream);

    let mut group = c.benchmark_group("stream");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.sample_size(20);
    group.bench_function("encode 256 MiB (frames, zero-copy blocks)", |b| {
        b.iter(|| encode(&block).map(|f| f.len()).sum::<usize>())
    });
    group.bench_function("decode 256 MiB in 1 MiB reads", |b| {
        b.iter(|| {
            let mut decoder = StreamDecoder::new();
            let mut buf = BytesMut::new();
            let mut blocks = 0u32;
            for chunk in stream.chunks(CHUNK) {
                buf.extend_from_slice(chunk);
                while let Some(event) = decoder.decode(&mut buf).unwrap() {
                    blocks += matches!(event, StreamEvent::Block { .. }) as u32;
                }
            }
            while let Some(event) = decoder.decode_eof(&mut buf).unwrap() {
                blocks += matches!(event, StreamEvent::Block { .. }) as u32;
            }
            assert_eq!(blocks, BLOCKS);
        })
    });
    let mut disk = Some(MemoryDisk(vec![0; DISK as usize]));
    group.bench_function("apply 256 MiB to a memory disk", |b| {
        b.iter(|| {
            let target = disk.take().unwrap();
            let mut kept = None;
            let report = feed(Cursor::new(&stream[..]), |_| {
                Ok(KeepOnFinish(target, &mut kept))
            })
            .unwrap();
            disk = kept;
            report.blocks
        })
    });
    group.finish();
}

/// Hands the memory disk back after the feed, so each iteration reuses one allocation.
struct KeepOnFinish<'a>(MemoryDisk, &'a mut Option<MemoryDisk>);

impl ApplyTarget for KeepOnFinish<'_> {
    fn virtual_size(&self) -> u64 {
        self.0.virtual_size()
    }
    fn write_block(&mut self, offset: u64, present: &[u8], data: &[u8]) -> Result<(), ApplyError> {
        self.0.write_block(offset, present, data)
    }
    fn finish(&mut self) -> Result<(), ApplyError> {
        *self.1 = Some(MemoryDisk(std::mem::take(&mut self.0.0)));
        Ok(())
    }
}

criterion_group!(benches, bench_stream);
criterion_main!(benches);
