//! A seed file's stream, frame by frame, for the import half: read without blocking the
//! runtime, every frame checked (CRC, length) as it is decoded, and the last frame held back
//! until the end record and the stream's SHA-256 check out, so a corrupt file never
//! completes an import.

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::OfflineError;
use crate::fsio::regular::open_regular;
use crate::replicate::manifest::ManifestDisk;
use crate::replicate::seed_file::{SeedDecoder, SeedEvent, SeedFileError};
use crate::xapi::transfer::ChunkStream;

/// Read size for seed files.
const READ_CHUNK: usize = 1 << 20;

pub(super) struct SeedFrames {
    path: PathBuf,
    file: tokio::fs::File,
    decoder: SeedDecoder,
    buf: BytesMut,
    hash: Sha256,
    /// The manifest's digest of the whole stream.
    expected_sha256: String,
    /// Every byte of the file as read, against the manifest's digest of the file.
    file_hash: Sha256,
    expected_file_sha256: String,
    held: Option<Bytes>,
    /// The end record was read (and the held frame released).
    ended: bool,
    /// The file is read to its end.
    eof: bool,
}

impl SeedFrames {
    pub(super) async fn open(path: &Path, disk: &ManifestDisk) -> Result<SeedFrames, OfflineError> {
        let file = open_regular(path)
            .map(tokio::fs::File::from_std)
            .map_err(|e| OfflineError::Invalid(format!("seed file {}: {e}", path.display())))?;
        Ok(SeedFrames {
            path: path.to_owned(),
            file,
            decoder: SeedDecoder::new(),
            buf: BytesMut::new(),
            hash: Sha256::new(),
            expected_sha256: disk.stream_sha256.clone(),
            file_hash: Sha256::new(),
            expected_file_sha256: disk.file_sha256.clone(),
            held: None,
            ended: false,
            eof: false,
        })
    }

    fn seed_error(&self, error: SeedFileError) -> OfflineError {
        OfflineError::SeedFile {
            file: self.path.clone(),
            error,
        }
    }

    /// The next decoded frame, `None` after the end record.
    async fn next_frame(&mut self) -> Result<Option<Bytes>, OfflineError> {
        loop {
            let event = if self.eof {
                self.decoder.decode_eof(&mut self.buf)
            } else {
                self.decoder.decode(&mut self.buf)
            }
            .map_err(|e| self.seed_error(e))?;
            match event {
                Some(SeedEvent::Frame { data, .. }) => return Ok(Some(data)),
                Some(SeedEvent::End(_)) => return Ok(None),
                // At the end of the file the decoder answers only after its end record.
                None if self.eof => return Ok(None),
                None => {
                    self.eof = self.read_more().await? == 0;
                }
            }
        }
    }

    /// Read the next piece of the file into `buf`, hashing it; 0 at the end of the file.
    async fn read_more(&mut self) -> Result<usize, OfflineError> {
        let before = self.buf.len();
        self.buf.reserve(READ_CHUNK);
        let n = self
            .file
            .read_buf(&mut self.buf)
            .await
            .map_err(OfflineError::io("read", &self.path))?;
        self.file_hash.update(&self.buf[before..]);
        Ok(n)
    }

    /// The end record is read: the stream's and the file's digests against the manifest's.
    async fn verify(&mut self) -> Result<(), OfflineError> {
        // The scan before the import refused trailing bytes; read to the end all the same,
        // so the file digest covers the whole file as it is now.
        while !self.eof {
            self.eof = self.read_more().await? == 0;
        }
        for (what, hash, expected) in [
            ("stream", &mut self.hash, &self.expected_sha256),
            ("file", &mut self.file_hash, &self.expected_file_sha256),
        ] {
            let digest = hex::encode(std::mem::take(hash).finalize());
            if !digest.eq_ignore_ascii_case(expected) {
                return Err(OfflineError::Invalid(format!(
                    "seed file {}: the {what}'s SHA-256 is {digest}, the manifest says {expected}",
                    self.path.display(),
                )));
            }
        }
        Ok(())
    }
}

impl ChunkStream for SeedFrames {
    type Error = OfflineError;

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, OfflineError> {
        if self.ended {
            return Ok(None);
        }
        loop {
            match self.next_frame().await? {
                Some(frame) => {
                    self.hash.update(&frame);
                    if let Some(previous) = self.held.replace(frame) {
                        return Ok(Some(previous));
                    }
                }
                None => {
                    self.verify().await?;
                    self.ended = true;
                    return Ok(self.held.take());
                }
            }
        }
    }

    fn blocks(&self) -> (u32, Option<u32>) {
        (0, None)
    }
}
