//! Creating and writing dynamic and differencing VHD files in place.
//!
//! Ordering keeps the file valid across a crash: new block data goes where the end footer was,
//! a new end footer follows it, and only after the data is synced are the BAT entries that
//! point at it written. A crash in between leaves blocks nothing points at, and readers fall
//! back to the footer copy at offset 0 if the end footer was being rewritten.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use uuid::Uuid;

use super::{ImageError, ImageErrorKind, Writeback, locate_footer};
use crate::fsio::atomic;
use crate::vhd::{
    self, Bat, DiskType, DynamicHeader, ErrorKind, FOOTER_SIZE, Footer, FormatError, HEADER_SIZE,
    ParentLocator, PlatformCode, SECTOR_SIZE, Structure, VhdTimestamp, bitmap,
    locator::encode_utf16le, round_up_to_sector,
};

/// What a differencing disk records about its parent.
#[derive(Debug, Clone)]
pub struct ParentLink {
    pub uuid: Uuid,
    pub timestamp: VhdTimestamp,
    /// The parent's path relative to the child's directory (usually a bare file name).
    pub relative_path: String,
}

#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub virtual_size: u64,
    pub block_size: u32,
    pub uuid: Uuid,
    /// The footer's time stamp.
    pub timestamp: VhdTimestamp,
    pub parent: Option<ParentLink>,
}

impl CreateOptions {
    /// A new image: a fresh uuid, and now as its time stamp.
    pub fn dynamic(virtual_size: u64) -> CreateOptions {
        CreateOptions {
            virtual_size,
            block_size: vhd::DEFAULT_BLOCK_SIZE,
            uuid: Uuid::new_v4(),
            timestamp: VhdTimestamp::from_system_time(SystemTime::now()),
            parent: None,
        }
    }

    pub fn differencing(virtual_size: u64, parent: ParentLink) -> CreateOptions {
        CreateOptions {
            parent: Some(parent),
            ..CreateOptions::dynamic(virtual_size)
        }
    }
}

/// Create an empty dynamic or differencing VHD at `path`, atomically and durably.
pub fn create(path: &Path, options: &CreateOptions) -> Result<(), ImageError> {
    if options.virtual_size > vhd::MAX_VIRTUAL_SIZE {
        return Err(ImageError::new(
            path,
            ImageErrorKind::Invalid(format!(
                "virtual size {} exceeds the VHD maximum of {}",
                options.virtual_size,
                vhd::MAX_VIRTUAL_SIZE
            )),
        ));
    }
    atomic::write(path, &empty_image(options))
        .map_err(|e| ImageError::io(&e.path, e.action, e.source))
}

/// The bytes of an empty image: footer copy, header, BAT at 1536, locator payloads, footer.
fn empty_image(options: &CreateOptions) -> Vec<u8> {
    let entries = options.virtual_size.div_ceil(u64::from(options.block_size)) as u32;
    let disk_type = if options.parent.is_some() {
        DiskType::Differencing
    } else {
        DiskType::Dynamic
    };
    let footer = Footer::new(
        disk_type,
        options.virtual_size,
        options.uuid,
        options.timestamp,
    );
    let table_offset = (FOOTER_SIZE + HEADER_SIZE) as u64;
    let mut header = DynamicHeader::new(table_offset, entries, options.block_size);
    let bat = Bat::unallocated(entries);
    let mut payloads = Vec::new();
    let mut next = table_offset + bat.encode().len() as u64;
    if let Some(parent) = &options.parent {
        header.parent_unique_id = parent.uuid;
        header.parent_timestamp = parent.timestamp;
        header.parent_unicode_name = parent.relative_path.clone();
        let relative = parent.relative_path.trim_start_matches("./");
        let entries = [
            (
                PlatformCode::MACX,
                format!("file://./{relative}").into_bytes(),
            ),
            (
                PlatformCode::W2RU,
                encode_utf16le(&format!(".\\{relative}")),
            ),
        ];
        for (slot, (code, payload)) in entries.into_iter().enumerate() {
            let space = round_up_to_sector(payload.len() as u64);
            header.parent_locators[slot] = ParentLocator {
                code,
                data_space: space as u32,
                data_length: payload.len() as u32,
                reserved: 0,
                data_offset: next,
            };
            payloads.push((next, payload));
            next += space;
        }
    }
    let mut image = vec![0u8; (next + FOOTER_SIZE as u64) as usize];
    let footer_bytes = footer.encode();
    image[..FOOTER_SIZE].copy_from_slice(&footer_bytes);
    image[FOOTER_SIZE..FOOTER_SIZE + HEADER_SIZE].copy_from_slice(&header.encode());
    let bat_bytes = bat.encode();
    image[table_offset as usize..table_offset as usize + bat_bytes.len()]
        .copy_from_slice(&bat_bytes);
    for (at, payload) in payloads {
        image[at as usize..at as usize + payload.len()].copy_from_slice(&payload);
    }
    image[next as usize..].copy_from_slice(&footer_bytes);
    image
}

/// An open dynamic or differencing VHD being written.
pub struct VhdWriter {
    path: PathBuf,
    file: File,
    footer: Footer,
    header: DynamicHeader,
    bat: Bat,
    bitmap_size: u64,
    /// Where the end footer sits: new blocks are appended here.
    end_of_data: u64,
    /// BAT entries changed since the last flush.
    dirty_entries: Vec<u32>,
    /// New blocks written since the last flush whose data is not yet synced.
    unsynced: bool,
    /// Set for a stream of writes, which then keeps little of the file in the page cache.
    writeback: Option<Writeback>,
}

impl VhdWriter {
    pub fn open(path: &Path) -> Result<VhdWriter, ImageError> {
        let io = |op, e| ImageError::io(path, op, e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io("open", e))?;
        let len = file.metadata().map_err(|e| io("stat", e))?.len();
        let tail_len = len.min(FOOTER_SIZE as u64);
        let mut tail = vec![0u8; tail_len as usize];
        file.read_exact_at(&mut tail, len - tail_len)
            .map_err(|e| io("read footer", e))?;
        let mut head = [0u8; FOOTER_SIZE + HEADER_SIZE];
        let head_len = (len as usize).min(head.len());
        file.read_exact_at(&mut head[..head_len], 0)
            .map_err(|e| io("read header", e))?;
        // Reuse the reader's footer rules (end footer, else the copy at 0) on the two ends.
        let probe: Vec<u8> = if len >= (FOOTER_SIZE * 2) as u64 {
            [&head[..FOOTER_SIZE], &tail[..]].concat()
        } else {
            tail.clone()
        };
        let located = locate_footer(&probe).map_err(|e| ImageError::new(path, e))?;
        let footer = located.footer;
        if footer.disk_type == DiskType::Fixed {
            return Err(ImageError::new(
                path,
                ImageErrorKind::Invalid("fixed VHDs are written as raw files, not here".into()),
            ));
        }
        let mut header_bytes = vec![0u8; HEADER_SIZE];
        file.read_exact_at(&mut header_bytes, footer.data_offset)
            .map_err(|e| io("read dynamic header", e))?;
        let header = DynamicHeader::parse(&header_bytes, footer.data_offset)
            .map_err(|e| ImageError::new(path, e))?;
        // The BAT must fit in the file before its size is trusted for an allocation.
        if header
            .table_offset
            .checked_add(u64::from(header.max_table_entries) * 4)
            .is_none_or(|end| end > len)
        {
            return Err(ImageError::new(
                path,
                FormatError::new(
                    ErrorKind::OutOfBounds,
                    Structure::Header,
                    "table_offset",
                    footer.data_offset + 16,
                    format_args!(
                        "BAT of {} entries at {}",
                        header.max_table_entries, header.table_offset
                    ),
                    format_args!("a BAT inside the {len}-byte file"),
                ),
            ));
        }
        let mut table = vec![0u8; header.bat_bytes().min(len - header.table_offset) as usize];
        file.read_exact_at(&mut table, header.table_offset)
            .map_err(|e| io("read BAT", e))?;
        let bat = Bat::parse(&table, header.max_table_entries, header.table_offset)
            .map_err(|e| ImageError::new(path, e))?;
        let bitmap_size = header.bitmap_size();
        let block_bytes = bitmap_size + u64::from(header.block_size);
        let metadata_end = header.table_offset + header.bat_bytes();
        let blocks_end = bat
            .allocated(bat.len())
            .map(|(_, s)| u64::from(s) * SECTOR_SIZE + block_bytes)
            .max()
            .unwrap_or(0);
        let locators_end = header
            .parent_locators
            .iter()
            .filter(|l| !l.is_unused())
            .map(|l| l.data_offset + round_up_to_sector(u64::from(l.data_length)))
            .max()
            .unwrap_or(0);
        let footer_at = if located.offset == 0 {
            len
        } else {
            len - tail_len
        };
        let end_of_data = round_up_to_sector(
            footer_at
                .max(metadata_end)
                .max(blocks_end)
                .max(locators_end),
        );
        Ok(VhdWriter {
            path: path.to_path_buf(),
            file,
            footer,
            header,
            bat,
            bitmap_size,
            end_of_data,
            dirty_entries: Vec::new(),
            unsynced: false,
            writeback: None,
        })
    }

    /// Treat the writes to come as one forward stream (an import, an apply), whose pages are
    /// written back and dropped behind it (see [`Writeback`]).
    pub fn streaming(mut self) -> VhdWriter {
        self.writeback = Some(Writeback::durable());
        self
    }

    /// Tell the writeback about `len` bytes written at `offset`.
    fn wrote(&mut self, offset: u64, len: u64) {
        if let Some(writeback) = &mut self.writeback {
            writeback.wrote(&self.file, offset, len);
        }
    }

    pub fn virtual_size(&self) -> u64 {
        self.footer.current_size
    }

    pub fn block_size(&self) -> u32 {
        self.header.block_size
    }

    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    fn io(&self, op: &'static str, e: std::io::Error) -> ImageError {
        ImageError::io(&self.path, op, e)
    }

    /// Write whole sectors at a sector-aligned guest `offset`, marking them present.
    pub fn write_sectors(&mut self, offset: u64, data: &[u8]) -> Result<(), ImageError> {
        if !offset.is_multiple_of(SECTOR_SIZE) || !(data.len() as u64).is_multiple_of(SECTOR_SIZE) {
            return Err(ImageError::new(
                &self.path,
                ImageErrorKind::Invalid(format!(
                    "write of {} bytes at {offset} is not sector aligned",
                    data.len()
                )),
            ));
        }
        self.check_range(offset, data.len() as u64)?;
        let block_size = u64::from(self.header.block_size);
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let index = (at / block_size) as u32;
            let within = at % block_size;
            let n = (block_size - within).min((data.len() - done) as u64) as usize;
            let first = (within / SECTOR_SIZE) as u32;
            let mut mask = vec![0u8; self.bitmap_size as usize];
            bitmap::set_range(&mut mask, first, (n as u64 / SECTOR_SIZE) as u32);
            self.write_in_block(index, within, &data[done..done + n], &mask)?;
            done += n;
        }
        Ok(())
    }

    /// Write the sectors of block `index` that `present` marks, taking them from `data` (the
    /// whole block). Unmarked sectors are left as they are.
    pub fn write_block(
        &mut self,
        index: u32,
        present: &[u8],
        data: &[u8],
    ) -> Result<(), ImageError> {
        let len = (u64::from(self.header.block_size)).min(
            self.footer
                .current_size
                .saturating_sub(u64::from(index) * u64::from(self.header.block_size)),
        );
        let sectors = len.div_ceil(SECTOR_SIZE) as u32;
        if u64::from(index)
            >= self
                .footer
                .current_size
                .div_ceil(u64::from(self.header.block_size))
        {
            return Err(ImageError::new(
                &self.path,
                ImageErrorKind::Invalid(format!(
                    "block {index} lies past the virtual size {}",
                    self.footer.current_size
                )),
            ));
        }
        for run in bitmap::runs(present, 0..sectors).filter(|r| r.present) {
            let from = u64::from(run.start) * SECTOR_SIZE;
            let to = (u64::from(run.start + run.len) * SECTOR_SIZE).min(data.len() as u64);
            if from >= to {
                continue;
            }
            let mut mask = vec![0u8; self.bitmap_size as usize];
            bitmap::set_range(&mut mask, run.start, run.len);
            self.write_in_block(index, from, &data[from as usize..to as usize], &mask)?;
        }
        Ok(())
    }

    /// Write `data` at `within` bytes into block `index` and OR `mask` into its bitmap,
    /// allocating the block at the end of the data if needed.
    fn write_in_block(
        &mut self,
        index: u32,
        within: u64,
        data: &[u8],
        mask: &[u8],
    ) -> Result<(), ImageError> {
        match self.bat.byte_offset(index) {
            Some(bitmap_at) => {
                let data_at = bitmap_at + self.bitmap_size;
                self.file
                    .write_all_at(data, data_at + within)
                    .map_err(|e| self.io("write block data", e))?;
                self.wrote(data_at + within, data.len() as u64);
                let mut current = vec![0u8; self.bitmap_size as usize];
                self.file
                    .read_exact_at(&mut current, bitmap_at)
                    .map_err(|e| self.io("read bitmap", e))?;
                if current.iter().zip(mask).any(|(c, m)| c | m != *c) {
                    current.iter_mut().zip(mask).for_each(|(c, m)| *c |= m);
                    self.file
                        .write_all_at(&current, bitmap_at)
                        .map_err(|e| self.io("write bitmap", e))?;
                }
            }
            None => {
                let bitmap_at = self.end_of_data;
                let data_at = bitmap_at + self.bitmap_size;
                let end = data_at + u64::from(self.header.block_size);
                // Data first, then the bitmap; the block is invisible until the BAT names it.
                self.file
                    .write_all_at(data, data_at + within)
                    .map_err(|e| self.io("write block data", e))?;
                self.file
                    .write_all_at(mask, bitmap_at)
                    .map_err(|e| self.io("write bitmap", e))?;
                let sector = u32::try_from(bitmap_at / SECTOR_SIZE).map_err(|_| {
                    ImageError::new(
                        &self.path,
                        ImageErrorKind::Invalid(
                            "file grew past the 2 TiB a BAT can address".into(),
                        ),
                    )
                })?;
                self.end_of_data = end;
                self.file
                    .write_all_at(&self.footer.encode(), end)
                    .map_err(|e| self.io("write footer", e))?;
                self.wrote(bitmap_at, end + FOOTER_SIZE as u64 - bitmap_at);
                self.bat.set(index, sector);
                self.dirty_entries.push(index);
                self.unsynced = true;
            }
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.footer.current_size)
        {
            return Err(ImageError::new(
                &self.path,
                ImageErrorKind::Invalid(format!(
                    "write of {len} bytes at {offset} ends past the virtual size {}",
                    self.footer.current_size
                )),
            ));
        }
        Ok(())
    }

    /// Make new blocks durable, then publish them in the BAT. Call before dropping the writer.
    pub fn flush(&mut self) -> Result<(), ImageError> {
        if self.dirty_entries.is_empty() {
            return Ok(());
        }
        if self.unsynced {
            self.file
                .sync_data()
                .map_err(|e| self.io("fdatasync block data", e))?;
            self.unsynced = false;
        }
        let table = self.bat.encode();
        self.file
            .write_all_at(&table, self.header.table_offset)
            .map_err(|e| self.io("write BAT", e))?;
        self.file
            .sync_data()
            .map_err(|e| self.io("fdatasync BAT", e))?;
        self.dirty_entries.clear();
        Ok(())
    }

    /// Mark the image hidden (blktap's flag for snapshot parents) in both footers.
    pub fn set_hidden(&mut self, hidden: bool) -> Result<(), ImageError> {
        self.footer.hidden = u8::from(hidden);
        let bytes = self.footer.encode();
        self.file
            .write_all_at(&bytes, 0)
            .and_then(|_| self.file.write_all_at(&bytes, self.end_of_data))
            .map_err(|e| self.io("write footer", e))
    }
}
