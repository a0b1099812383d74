//! Writing a seed file: the stream's bytes cut into frames, compressed and appended on a
//! blocking thread while the export keeps downloading.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::OfflineError;
use crate::replicate::seed_file::{DEFAULT_FRAME, SeedEncoder};

/// Chunks queued ahead of the compressing thread.
const QUEUE_DEPTH: usize = 64;

pub(super) struct Written {
    pub(super) file_size: u64,
    pub(super) file_sha256: String,
    pub(super) stream_length: u64,
    pub(super) stream_sha256: String,
    pub(super) frames: u64,
}

/// Appends frames to a seed file, hashing what it writes. (The stream's own digest is
/// taken by the reader, which balances the two threads.)
struct SeedWriter {
    encoder: SeedEncoder,
    file: File,
    pending: BytesMut,
    file_hash: Sha256,
    path: PathBuf,
}

impl SeedWriter {
    fn create(file: File, path: &Path, level: i32) -> Result<SeedWriter, OfflineError> {
        let mut writer = SeedWriter {
            encoder: SeedEncoder::new(level, DEFAULT_FRAME)
                .map_err(OfflineError::io("set up zstd for", path))?,
            file,
            pending: BytesMut::with_capacity(DEFAULT_FRAME as usize),
            file_hash: Sha256::new(),
            path: path.to_owned(),
        };
        let header = writer.encoder.header();
        writer.emit(&header)?;
        Ok(writer)
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<(), OfflineError> {
        self.file_hash.update(bytes);
        self.file
            .write_all(bytes)
            .map_err(OfflineError::io("write", &self.path))
    }

    fn push(&mut self, mut data: &[u8]) -> Result<(), OfflineError> {
        let max = self.encoder.max_frame() as usize;
        while !data.is_empty() {
            let take = (max - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == max {
                self.flush_frame()?;
            }
        }
        Ok(())
    }

    fn flush_frame(&mut self) -> Result<(), OfflineError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let frame = self
            .encoder
            .frame(&self.pending)
            .map_err(OfflineError::io("compress a frame of", &self.path))?;
        self.pending.clear();
        self.emit(&frame)
    }

    fn finish(mut self) -> Result<Written, OfflineError> {
        self.flush_frame()?;
        let (end, totals) = self.encoder.end();
        self.emit(&end)?;
        self.file
            .sync_all()
            .map_err(OfflineError::io("fsync", &self.path))?;
        Ok(Written {
            file_size: totals.compressed,
            file_sha256: hex::encode(self.file_hash.finalize()),
            stream_length: totals.uncompressed,
            stream_sha256: String::new(),
            frames: totals.frames,
        })
    }
}

/// A [`SeedWriter`] on a blocking thread, so compression overlaps the download: the export
/// reader hands over chunks through a bounded queue (backpressure), the thread compresses
/// and writes frames.
pub(super) struct BackgroundWriter {
    queue: Option<tokio::sync::mpsc::Sender<Bytes>>,
    thread: tokio::task::JoinHandle<Result<Written, OfflineError>>,
    path: PathBuf,
}

impl BackgroundWriter {
    pub(super) fn start(
        file: File,
        path: &Path,
        level: i32,
    ) -> Result<BackgroundWriter, OfflineError> {
        let mut writer = SeedWriter::create(file, path, level)?;
        let (queue, mut chunks) = tokio::sync::mpsc::channel::<Bytes>(QUEUE_DEPTH);
        let thread = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = chunks.blocking_recv() {
                writer.push(&chunk)?;
            }
            writer.finish()
        });
        Ok(BackgroundWriter {
            queue: Some(queue),
            thread,
            path: path.to_owned(),
        })
    }

    pub(super) async fn push(&mut self, chunk: Bytes) -> Result<(), OfflineError> {
        let delivered = match &self.queue {
            Some(queue) => queue.send(chunk).await.is_ok(),
            None => false,
        };
        if delivered {
            Ok(())
        } else {
            // The thread stopped on an error: it says which.
            self.queue = None;
            Err(OfflineError::WriterLost {
                path: self.path.clone(),
            })
        }
    }

    /// The totals, once the thread has written the end record and synced the file.
    pub(super) async fn finish(mut self) -> Result<Written, OfflineError> {
        self.queue = None;
        let path = self.path;
        self.thread
            .await
            .unwrap_or(Err(OfflineError::WriterLost { path }))
    }
}
