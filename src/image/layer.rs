//! One VHD file opened as a single layer: footer, header, BAT and block access over its bytes.
//! Tolerates the documented quirks of real producers; every tolerated quirk is kept as a note.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::layout::{self, Scope, SparseFile};
use super::mapping::FileBytes;
use super::{ImageError, ImageErrorKind};
use crate::vhd::{
    self, Bat, DiskType, DynamicHeader, ErrorKind, FOOTER_SIZE, Footer, FormatError, HEADER_SIZE,
    SECTOR_SIZE, Structure, bat::UNALLOCATED, batmap::BatmapHeader, bitmap, footer::ChecksumStatus,
};

/// What opening does with a file whose structure makes its content ambiguous or wrong (the
/// findings of `image::check` that matter for reading).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Damage {
    /// Refuse it, naming the first finding. Tolerated producer quirks are not damage.
    #[default]
    Refuse,
    /// Read it anyway, for recovery: the findings are kept ([`VhdLayer::damage`]) for the
    /// caller to show, and blocks that run past the end of the file read as unallocated.
    Tolerate,
}

/// Nominal block size of a fixed disk, so that every layer can be addressed by blocks.
const FIXED_BLOCK_SIZE: u32 = vhd::DEFAULT_BLOCK_SIZE;

/// Where a block's bytes are within one layer.
#[derive(Debug, Clone, Copy)]
pub enum BlockState<'a> {
    /// Not in this layer: zeros in a dynamic disk, the parent's data in a differencing one.
    Unallocated,
    /// Every sector is present; data starts at this byte offset of the file.
    Full { data_offset: u64 },
    /// Only the sectors set in `bitmap` are present.
    Partial { bitmap: &'a [u8], data_offset: u64 },
}

/// The footer chosen for a file and how it was found.
#[derive(Debug, Clone)]
pub struct LocatedFooter {
    pub footer: Footer,
    /// Absolute offset of the footer that was used.
    pub offset: u64,
    pub notes: Vec<String>,
}

/// Read the footer at EOF (512 bytes, or 511 for pre-2004 images); if it is damaged, fall
/// back to the copy at offset 0 as the specification says Virtual PC does.
pub fn locate_footer(bytes: &[u8]) -> Result<LocatedFooter, FormatError> {
    let len = bytes.len() as u64;
    if len < FOOTER_SIZE as u64 - 1 {
        return Err(FormatError::truncated(
            Structure::File,
            0,
            bytes.len(),
            FOOTER_SIZE,
        ));
    }
    let end_at = if len % SECTOR_SIZE == 511 {
        len - 511
    } else {
        len - 512
    };
    let mut notes = Vec::new();
    let end = Footer::parse(&bytes[end_at as usize..], end_at);
    let copy = Footer::parse(&bytes[..FOOTER_SIZE.min(bytes.len())], 0);
    let note_hidden = |status: ChecksumStatus, at: u64, notes: &mut Vec<String>| {
        if status == ChecksumStatus::ValidIgnoringHidden {
            notes.push(format!(
                "footer at byte {at}: checksum matches only with the hidden byte cleared (early blktap)"
            ));
        }
    };
    match (end, copy) {
        (Ok((footer, status)), copy) => {
            note_hidden(status, end_at, &mut notes);
            if len % SECTOR_SIZE == 511 {
                notes.push("511-byte footer (pre-Virtual PC 2004 image)".into());
            }
            if footer.disk_type.is_sparse() {
                match copy {
                    Ok((c, _)) if c != footer => {
                        notes.push("footer copy at byte 0 differs from the end footer".into())
                    }
                    Err(e) => notes.push(format!("footer copy at byte 0 is unreadable: {e}")),
                    Ok(_) => {}
                }
            }
            Ok(LocatedFooter {
                footer,
                offset: end_at,
                notes,
            })
        }
        (Err(end_err), Ok((footer, status))) if footer.disk_type.is_sparse() => {
            note_hidden(status, 0, &mut notes);
            notes.push(format!(
                "end footer unusable ({end_err}); using the copy at byte 0"
            ));
            Ok(LocatedFooter {
                footer,
                offset: 0,
                notes,
            })
        }
        (Err(end_err), _) => Err(end_err),
    }
}

pub struct VhdLayer {
    path: PathBuf,
    bytes: FileBytes,
    footer: Footer,
    header: Option<DynamicHeader>,
    bat: Bat,
    block_size: u32,
    bitmap_size: u64,
    block_count: u32,
    /// The blktap batmap's bits, when present and valid: a set bit means "block is full".
    full_blocks: Option<Vec<u8>>,
    notes: Vec<String>,
    /// Structural findings read past under [`Damage::Tolerate`]; empty otherwise.
    damage: Vec<FormatError>,
}

impl std::fmt::Debug for VhdLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdLayer")
            .field("path", &self.path)
            .field("disk_type", &self.footer.disk_type)
            .field("virtual_size", &self.footer.current_size)
            .finish_non_exhaustive()
    }
}

impl VhdLayer {
    /// Open a file for reading, refusing a damaged one.
    pub fn open(path: &Path) -> Result<VhdLayer, ImageError> {
        VhdLayer::open_with(path, Damage::Refuse)
    }

    pub fn open_with(path: &Path, damage: Damage) -> Result<VhdLayer, ImageError> {
        let bytes = FileBytes::open(path)?;
        VhdLayer::from_file_bytes(path, bytes, damage)
    }

    /// Open from an in-memory buffer; `name` is used in errors.
    pub fn from_bytes(name: &Path, bytes: Bytes) -> Result<VhdLayer, ImageError> {
        VhdLayer::from_bytes_with(name, bytes, Damage::Refuse)
    }

    pub fn from_bytes_with(
        name: &Path,
        bytes: Bytes,
        damage: Damage,
    ) -> Result<VhdLayer, ImageError> {
        VhdLayer::from_file_bytes(name, FileBytes::from_bytes(bytes), damage)
    }

    fn from_file_bytes(
        path: &Path,
        bytes: FileBytes,
        damage: Damage,
    ) -> Result<VhdLayer, ImageError> {
        let fail = |e: FormatError| ImageError::new(path, e);
        let all = bytes.get(0, bytes.len()).unwrap_or_default();
        let located = locate_footer(all).map_err(fail)?;
        let mut findings = layout::footer_findings(&located.footer, located.offset);
        let footer = located.footer;
        let mut layer = VhdLayer {
            path: path.to_path_buf(),
            bytes,
            footer,
            header: None,
            bat: Bat::default(),
            block_size: FIXED_BLOCK_SIZE,
            bitmap_size: 0,
            block_count: 0,
            full_blocks: None,
            notes: located.notes,
            damage: Vec::new(),
        };
        layer.block_count = layer
            .footer
            .current_size
            .div_ceil(u64::from(FIXED_BLOCK_SIZE)) as u32;
        if layer.footer.disk_type == DiskType::Fixed {
            if located.offset < layer.footer.current_size {
                return Err(fail(FormatError::new(
                    ErrorKind::Truncated,
                    Structure::File,
                    "length",
                    0,
                    format_args!("{} data bytes", located.offset),
                    format_args!(
                        "{} (current_size of a fixed disk)",
                        layer.footer.current_size
                    ),
                )));
            }
        } else {
            findings.extend(layer.open_sparse(located.offset).map_err(fail)?);
        }
        match (damage, findings.len()) {
            (_, 0) => {}
            (Damage::Refuse, n) => {
                let first = findings.swap_remove(0);
                return Err(ImageError::new(
                    path,
                    ImageErrorKind::Damaged {
                        finding: first,
                        more: n - 1,
                    },
                ));
            }
            (Damage::Tolerate, _) => layer.damage = findings,
        }
        Ok(layer)
    }

    /// Parse the header and BAT; returns the structural findings (see [`Damage`]).
    fn open_sparse(&mut self, footer_at: u64) -> Result<Vec<FormatError>, FormatError> {
        let len = self.bytes.len();
        let header_at = self.footer.data_offset;
        let header_bytes = self
            .bytes
            .get(header_at, HEADER_SIZE as u64)
            .ok_or_else(|| {
                FormatError::new(
                    ErrorKind::OutOfBounds,
                    Structure::Footer,
                    "data_offset",
                    footer_at + 16,
                    format_args!("header at {header_at}"),
                    format_args!("a 1024-byte header inside the {len}-byte file"),
                )
            })?;
        let header = DynamicHeader::parse(header_bytes, header_at)?;
        let table_bytes = u64::from(header.max_table_entries) * 4;
        let table = self
            .bytes
            .get(header.table_offset, table_bytes)
            .ok_or_else(|| {
                FormatError::new(
                    ErrorKind::OutOfBounds,
                    Structure::Header,
                    "table_offset",
                    header_at + 16,
                    format_args!(
                        "BAT of {} entries at {}",
                        header.max_table_entries, header.table_offset
                    ),
                    format_args!("a BAT inside the {len}-byte file"),
                )
            })?;
        self.bat = Bat::parse(table, header.max_table_entries, header.table_offset)?;
        self.block_size = header.block_size;
        self.bitmap_size = header.bitmap_size();
        self.block_count = header.blocks_for(self.footer.current_size) as u32;
        let findings = layout::sparse_findings(
            &SparseFile {
                bytes: self.bytes.get(0, len).unwrap_or_default(),
                footer: &self.footer,
                footer_at,
                header: &header,
                bat: &self.bat,
            },
            Scope::Read,
        );
        if !findings.is_empty() {
            self.drop_blocks_past_end();
        }
        self.full_blocks = self.read_batmap(&header);
        self.header = Some(header);
        Ok(findings)
    }

    /// Mark unallocated every block that runs past the end of the file, so that a damaged
    /// file read anyway never reads outside its bytes.
    fn drop_blocks_past_end(&mut self) {
        let len = self.bytes.len();
        let past: Vec<u32> = self
            .bat
            .allocated(self.block_count)
            .filter(|&(index, sector)| {
                let need = self.bitmap_size + self.block_len(index).next_multiple_of(SECTOR_SIZE);
                u64::from(sector) * SECTOR_SIZE + need > len
            })
            .map(|(index, _)| index)
            .collect();
        for index in past {
            self.bat.set(index, UNALLOCATED);
        }
    }

    /// blktap's batmap, trusted only for `tap` creators from version 1.1 with a valid checksum.
    fn read_batmap(&mut self, header: &DynamicHeader) -> Option<Vec<u8>> {
        if !self.footer.is_blktap() || self.footer.creator_version < 0x0001_0001 {
            return None;
        }
        let at = header.table_offset + header.bat_bytes();
        let parsed = BatmapHeader::parse(self.bytes.get(at, 512)?, at);
        let batmap = match parsed {
            Ok(Some(h)) => h,
            Ok(None) => return None,
            Err(e) => {
                self.notes.push(format!("batmap ignored: {e}"));
                return None;
            }
        };
        let map = self.bytes.get(batmap.map_offset, batmap.map_bytes());
        match map {
            Some(map) if batmap.verify(map) => Some(map.to_vec()),
            _ => {
                self.notes.push(format!(
                    "batmap at byte {at} ignored: bad checksum or outside the file"
                ));
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    pub fn header(&self) -> Option<&DynamicHeader> {
        self.header.as_ref()
    }

    pub fn bat(&self) -> &Bat {
        &self.bat
    }

    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The structural findings this layer was read past ([`Damage::Tolerate`] only).
    pub fn damage(&self) -> &[FormatError] {
        &self.damage
    }

    pub fn disk_type(&self) -> DiskType {
        self.footer.disk_type
    }

    pub fn virtual_size(&self) -> u64 {
        self.footer.current_size
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Blocks needed to cover the virtual size; BAT entries past it are ignored.
    pub fn block_count(&self) -> u32 {
        self.block_count
    }

    pub fn file_len(&self) -> u64 {
        self.bytes.len()
    }

    pub fn has_batmap(&self) -> bool {
        self.full_blocks.is_some()
    }

    /// Guest-visible bytes of block `index`: the block size, or less for a short last block.
    pub fn block_len(&self, index: u32) -> u64 {
        let start = u64::from(index) * u64::from(self.block_size);
        self.footer
            .current_size
            .saturating_sub(start)
            .min(u64::from(self.block_size))
    }

    pub fn is_allocated(&self, index: u32) -> bool {
        index < self.block_count
            && (self.footer.disk_type == DiskType::Fixed || self.bat.sector(index).is_some())
    }

    /// Where block `index` lives in this file.
    pub fn block_state(&self, index: u32) -> BlockState<'_> {
        if index >= self.block_count {
            return BlockState::Unallocated;
        }
        if self.footer.disk_type == DiskType::Fixed {
            return BlockState::Full {
                data_offset: u64::from(index) * u64::from(self.block_size),
            };
        }
        let Some(bitmap_at) = self.bat.byte_offset(index) else {
            return BlockState::Unallocated;
        };
        let data_offset = bitmap_at + self.bitmap_size;
        let batmap_full = self
            .full_blocks
            .as_deref()
            .is_some_and(|map| bitmap::is_set(map, index));
        let sectors = self.block_len(index).div_ceil(SECTOR_SIZE) as u32;
        // Bounds were checked at open, so the bitmap is inside the file.
        let bitmap = self
            .bytes
            .get(bitmap_at, self.bitmap_size)
            .unwrap_or_default();
        if batmap_full || bitmap::is_full(bitmap, sectors) {
            BlockState::Full { data_offset }
        } else {
            BlockState::Partial {
                bitmap,
                data_offset,
            }
        }
    }

    /// Copy file bytes `offset..offset + out.len()` into `out` (bounds checked at open).
    pub fn copy_out(&self, offset: u64, out: &mut [u8]) {
        match self.bytes.get(offset, out.len() as u64) {
            Some(src) => {
                out.copy_from_slice(src);
                self.bytes.note_read(out.len() as u64);
            }
            None => out.fill(0),
        }
    }

    /// A zero-copy slice of the file.
    pub fn slice(&self, offset: u64, len: u64) -> Option<Bytes> {
        self.bytes.slice(offset, len)
    }

    /// Raw file bytes, for structure walks such as `check` and locator payloads.
    pub fn raw(&self, offset: u64, len: u64) -> Option<&[u8]> {
        self.bytes.get(offset, len)
    }

    /// Decoded parent locator paths, in entry order, with errors kept per entry.
    pub fn parent_locator_paths(&self) -> Vec<(u8, Result<String, FormatError>)> {
        let Some(header) = &self.header else {
            return Vec::new();
        };
        header
            .parent_locators
            .iter()
            .enumerate()
            .filter(|(_, l)| l.code.is_path())
            .map(|(i, l)| {
                let i = i as u8;
                let entry_at = self.footer.data_offset + 576 + u64::from(i) * 24;
                let payload = l.reserved_bytes(i, entry_at).and_then(|_| {
                    self.bytes
                        .get(l.data_offset, u64::from(l.data_length))
                        .ok_or_else(|| {
                            FormatError::new(
                                ErrorKind::OutOfBounds,
                                Structure::ParentLocator(i),
                                "data_offset",
                                entry_at + 16,
                                format_args!("{} bytes at {}", l.data_length, l.data_offset),
                                "a payload inside the file",
                            )
                        })
                });
                (i, payload.and_then(|p| l.decode_path(i, p, l.data_offset)))
            })
            .collect()
    }
}
