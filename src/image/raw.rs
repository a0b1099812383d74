//! Writing a chain's guest content out as a raw disk image.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};

use super::{BlockData, Chain};

/// Where raw output goes, which decides what happens to blocks no layer allocates.
pub enum RawSink<'a> {
    /// A regular file: skipped regions stay holes, and the file is sized at the end.
    SparseFile(&'a mut File),
    /// A pipe, terminal or device: every byte, zeros included, is written in order.
    Stream(&'a mut File),
}

impl<'a> RawSink<'a> {
    /// The sink `file` supports: sparse for a regular file; sequential for a character
    /// device, a pipe or a socket, which cannot seek or be truncated (`/dev/null` refuses
    /// `set_len` with "Invalid argument").
    pub fn for_file(file: &'a mut File) -> std::io::Result<RawSink<'a>> {
        Ok(if file.metadata()?.is_file() {
            RawSink::SparseFile(file)
        } else {
            RawSink::Stream(file)
        })
    }
}

/// Write the whole virtual disk of `chain` to `sink`; returns the data bytes written (holes
/// excluded).
pub fn write_raw(chain: &Chain, sink: RawSink<'_>) -> std::io::Result<u64> {
    let size = chain.virtual_size();
    let mut written = 0u64;
    let mut zeros: Vec<u8> = Vec::new();
    match sink {
        RawSink::SparseFile(file) => {
            let mut position = 0u64;
            for index in 0..chain.block_count() {
                let at = u64::from(index) * u64::from(chain.block_size());
                if let BlockData::Data(bytes) = chain.block_data(index) {
                    if position != at {
                        file.seek(SeekFrom::Start(at))?;
                    }
                    file.write_all(&bytes)?;
                    written += bytes.len() as u64;
                    position = at + bytes.len() as u64;
                }
            }
            file.set_len(size)?;
        }
        RawSink::Stream(file) => {
            for index in 0..chain.block_count() {
                match chain.block_data(index) {
                    BlockData::Data(bytes) => {
                        file.write_all(&bytes)?;
                        written += bytes.len() as u64;
                    }
                    BlockData::Zero => {
                        let len = chain.leaf().block_len(index) as usize;
                        if zeros.len() < len {
                            // Never written to, so these pages stay the shared zero page.
                            zeros = vec![0u8; len];
                        }
                        file.write_all(&zeros[..len])?;
                    }
                }
            }
        }
    }
    Ok(written)
}
