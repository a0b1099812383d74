//! Apply: write the blocks of a decoded VHD stream onto a target, only the sectors each block's
//! bitmap marks present, as XAPI's import does.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::image::{CreateOptions, ImageError, VhdWriter, Writeback, create};
use crate::vhd::{SECTOR_SIZE, bitmap};

/// Where applied blocks go.
pub trait ApplyTarget {
    /// The target disk's size in bytes.
    fn virtual_size(&self) -> u64;
    /// Write the sectors of the block at guest `offset` that `present` marks, from `data`.
    fn write_block(&mut self, offset: u64, present: &[u8], data: &[u8]) -> Result<(), ApplyError>;
    /// Make everything written durable and visible.
    fn finish(&mut self) -> Result<(), ApplyError>;
}

impl<T: ApplyTarget + ?Sized> ApplyTarget for Box<T> {
    fn virtual_size(&self) -> u64 {
        (**self).virtual_size()
    }
    fn write_block(&mut self, offset: u64, present: &[u8], data: &[u8]) -> Result<(), ApplyError> {
        (**self).write_block(offset, present, data)
    }
    fn finish(&mut self) -> Result<(), ApplyError> {
        (**self).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{}: the stream's disk is {stream} bytes but the target holds {target}", path.display())]
    TooSmall {
        path: PathBuf,
        stream: u64,
        target: u64,
    },
}

/// A raw file or block device.
pub struct RawTarget {
    path: PathBuf,
    file: File,
    size: u64,
    writeback: Writeback,
    /// Whether `finish` waits for the disk (fdatasync).
    durable: bool,
}

impl RawTarget {
    /// Open `path`; a missing file is created with `create_size` bytes if that is given.
    pub fn open(path: &Path, create_size: Option<u64>) -> Result<RawTarget, ApplyError> {
        let io = |op, source| ApplyError::Io {
            path: path.to_path_buf(),
            op,
            source,
        };
        let exists = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create_size.is_some())
            .truncate(false)
            .open(path)
            .map_err(|e| io("open", e))?;
        if let (false, Some(size)) = (exists, create_size) {
            file.set_len(size).map_err(|e| io("set length", e))?;
        }
        let size = device_or_file_size(&file).map_err(|e| io("size", e))?;
        Ok(RawTarget {
            path: path.to_path_buf(),
            file,
            size,
            writeback: Writeback::durable(),
            durable: true,
        })
    }

    /// Never wait for the disk, as `qemu-img convert` does by default (cache=unsafe): the
    /// writeback is started as the writes go but nothing waits for it, so a crash or power
    /// loss soon after can lose them.
    pub fn without_sync(mut self) -> RawTarget {
        self.writeback = Writeback::lazy();
        self.durable = false;
        self
    }
}

fn device_or_file_size(file: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len > 0 {
        return Ok(len);
    }
    // Block devices report length 0 in metadata; their end is found by seeking.
    let mut handle = file;
    let end = handle.seek(SeekFrom::End(0))?;
    handle.seek(SeekFrom::Start(0))?;
    Ok(end)
}

impl ApplyTarget for RawTarget {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn write_block(&mut self, offset: u64, present: &[u8], data: &[u8]) -> Result<(), ApplyError> {
        let sectors = (data.len() as u64).div_ceil(SECTOR_SIZE) as u32;
        for run in bitmap::runs(present, 0..sectors).filter(|r| r.present) {
            let from = u64::from(run.start) * SECTOR_SIZE;
            let to = (u64::from(run.start + run.len) * SECTOR_SIZE).min(data.len() as u64);
            let end = (offset + to).min(self.size);
            if offset + from >= end {
                continue;
            }
            let piece = &data[from as usize..(end - offset) as usize];
            self.file
                .write_all_at(piece, offset + from)
                .map_err(|e| ApplyError::Io {
                    path: self.path.clone(),
                    op: "write",
                    source: e,
                })?;
            self.writeback
                .wrote(&self.file, offset + from, piece.len() as u64);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ApplyError> {
        if !self.durable {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| ApplyError::Io {
            path: self.path.clone(),
            op: "fdatasync",
            source: e,
        })
    }
}

/// A dynamic or differencing VHD file, written in place with its bitmaps merged.
pub struct VhdTarget {
    writer: VhdWriter,
}

impl VhdTarget {
    /// Open `path`; a missing file is created as an empty dynamic VHD of `create_size` bytes.
    pub fn open(path: &Path, create_size: Option<u64>) -> Result<VhdTarget, ApplyError> {
        if let (false, Some(size)) = (path.exists(), create_size) {
            create(path, &CreateOptions::dynamic(size))?;
        }
        Ok(VhdTarget {
            writer: VhdWriter::open(path)?.streaming(),
        })
    }
}

impl ApplyTarget for VhdTarget {
    fn virtual_size(&self) -> u64 {
        self.writer.virtual_size()
    }

    fn write_block(&mut self, offset: u64, present: &[u8], data: &[u8]) -> Result<(), ApplyError> {
        let block_size = u64::from(self.writer.block_size());
        let usable = (self.writer.virtual_size().saturating_sub(offset)).min(data.len() as u64);
        let data = &data[..usable as usize];
        if offset.is_multiple_of(block_size) && data.len() as u64 <= block_size {
            self.writer
                .write_block((offset / block_size) as u32, present, data)?;
            return Ok(());
        }
        // Different block sizes on the two sides: write each present run by guest offset.
        let sectors = (data.len() as u64).div_ceil(SECTOR_SIZE) as u32;
        for run in bitmap::runs(present, 0..sectors).filter(|r| r.present) {
            let from = u64::from(run.start) * SECTOR_SIZE;
            let to = (u64::from(run.start + run.len) * SECTOR_SIZE).min(data.len() as u64);
            self.writer
                .write_sectors(offset + from, &data[from as usize..to as usize])?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ApplyError> {
        Ok(self.writer.flush()?)
    }
}
