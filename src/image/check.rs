//! Structural validation in the spirit of `vhd-util check`: walk every structure and report
//! every problem with its byte offset, rather than stopping at the first one.

use serde::Serialize;

use super::layout::{self, Scope, SparseFile};
use super::locate_footer;
use crate::vhd::{
    Bat, DiskType, DynamicHeader, FormatError, Geometry, HEADER_SIZE, SECTOR_SIZE,
    batmap::BatmapHeader, footer, header,
};

/// One finding. A problem is corruption or a spec violation; a note is a tolerated quirk of a
/// real producer, reported so that nothing is hidden.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub offset: u64,
    pub structure: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub disk_type: Option<DiskType>,
    pub problems: Vec<Finding>,
    pub notes: Vec<Finding>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, offset: u64, structure: impl ToString, message: impl ToString) {
        self.problems.push(Finding {
            offset,
            structure: structure.to_string(),
            message: message.to_string(),
        });
    }

    fn note(&mut self, offset: u64, structure: impl ToString, message: impl ToString) {
        self.notes.push(Finding {
            offset,
            structure: structure.to_string(),
            message: message.to_string(),
        });
    }

    fn format_problem(&mut self, e: &FormatError) {
        self.problem(
            e.offset,
            e.structure,
            format!(
                "{} {}: found {}, expected {}",
                e.structure, e.field, e.found, e.expected
            ),
        );
    }
}

/// Check a whole image held in memory (or mapped). `Err` means the bytes are not recognisable
/// as a VHD at all: no usable footer at the end or at offset 0.
pub fn check_bytes(bytes: &[u8]) -> Result<CheckReport, FormatError> {
    let len = bytes.len() as u64;
    let located = locate_footer(bytes)?;
    let mut report = CheckReport {
        disk_type: Some(located.footer.disk_type),
        ..CheckReport::default()
    };
    let f = &located.footer;
    for note in &located.notes {
        if note.starts_with("end footer unusable") {
            report.problem(len.saturating_sub(512), "footer", note);
        } else if note.contains("differs") || note.contains("unreadable") {
            report.problem(0, "footer copy", note);
        } else {
            report.note(located.offset, "footer", note);
        }
    }
    check_footer_fields(bytes, &located, &mut report);
    for finding in layout::footer_findings(f, located.offset) {
        report.format_problem(&finding);
    }
    if !matches!(len % SECTOR_SIZE, 0 | 511) {
        report.problem(
            len,
            "file",
            format!("length {len} is not a whole number of sectors (or one short)"),
        );
    }
    if f.disk_type == DiskType::Fixed {
        if located.offset < f.current_size {
            report.problem(
                located.offset + 48,
                "footer",
                format!(
                    "current_size {} of a fixed disk exceeds the {} data bytes in the file",
                    f.current_size, located.offset
                ),
            );
        }
        return Ok(report);
    }

    let header_at = f.data_offset;
    let Some(header_bytes) = slice(bytes, header_at, HEADER_SIZE as u64) else {
        report.problem(
            located.offset + 16,
            "footer",
            format!("data_offset {header_at} puts the header outside the {len}-byte file"),
        );
        return Ok(report);
    };
    let header = match DynamicHeader::parse(header_bytes, header_at) {
        Ok(h) => h,
        Err(e) => {
            report.format_problem(&e);
            return Ok(report);
        }
    };
    check_header_fields(header_bytes, &header, f, header_at, &mut report);
    check_locators(bytes, &header, f.disk_type, header_at, &mut report);

    let Some(table) = slice(
        bytes,
        header.table_offset,
        u64::from(header.max_table_entries) * 4,
    ) else {
        report.problem(
            header_at + 16,
            "dynamic header",
            format!(
                "BAT of {} entries at {} lies outside the {len}-byte file",
                header.max_table_entries, header.table_offset
            ),
        );
        return Ok(report);
    };
    let bat = match Bat::parse(table, header.max_table_entries, header.table_offset) {
        Ok(bat) => bat,
        Err(e) => {
            report.format_problem(&e);
            return Ok(report);
        }
    };
    let file = SparseFile {
        bytes,
        footer: f,
        footer_at: located.offset,
        header: &header,
        bat: &bat,
    };
    check_batmap(bytes, &file, &mut report);
    check_ignored_entries(&bat, &header, f.current_size, located.offset, &mut report);
    for finding in layout::sparse_findings(&file, Scope::Check) {
        report.format_problem(&finding);
    }
    Ok(report)
}

fn slice(bytes: &[u8], at: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(at).ok()?;
    bytes.get(start..start.checked_add(usize::try_from(len).ok()?)?)
}

fn check_footer_fields(bytes: &[u8], located: &super::LocatedFooter, report: &mut CheckReport) {
    let f = &located.footer;
    let at = located.offset;
    let footer_len = if at == 0 {
        512
    } else {
        bytes.len() - at as usize
    };
    let raw = &bytes[at as usize..(at as usize + footer_len).min(bytes.len())];
    if f.features & footer::FEATURES_RESERVED == 0 {
        report.problem(
            at + 8,
            "footer",
            format!("features {:#010x} lacks the reserved bit 0x2", f.features),
        );
    }
    if f.features & !0x3 != 0 {
        report.problem(
            at + 8,
            "footer",
            format!("features {:#010x} has unknown bits", f.features),
        );
    }
    if f.saved_state > 1 || f.hidden > 1 {
        report.problem(
            at + 84,
            "footer",
            format!(
                "saved_state {} / hidden {} must be 0 or 1",
                f.saved_state, f.hidden
            ),
        );
    }
    if !footer::reserved_bytes_are_zero(raw) {
        report.problem(at + 86, "footer", "reserved bytes 86..511 are not zero");
    }
    if f.unique_id.is_nil() {
        report.problem(at + 68, "footer", "unique id is all zeros");
    }
    if f.original_size > f.current_size && f.disk_type != DiskType::Fixed {
        report.note(
            at + 40,
            "footer",
            format!(
                "original size {} exceeds current size {}",
                f.original_size, f.current_size
            ),
        );
    }
    let spec = Geometry::for_size(f.current_size);
    if f.geometry.to_u32() > spec.to_u32() {
        report.note(at + 56, "footer", format!(
            "geometry {} is larger than the spec's {} for this size (vhd-util: geometry too large); size is taken from current_size",
            f.geometry, spec));
    }
    if f.disk_type.is_sparse() && f.data_offset != 512 {
        report.note(
            at + 16,
            "footer",
            format!(
                "dynamic header at {} instead of the usual 512",
                f.data_offset
            ),
        );
    }
}

fn check_header_fields(
    raw: &[u8],
    h: &DynamicHeader,
    f: &crate::vhd::Footer,
    at: u64,
    report: &mut CheckReport,
) {
    if let Err(e) = header::check_parent_name(raw, at) {
        report.format_problem(&e);
    }
    if !header::reserved_bytes_are_zero(raw) {
        report.problem(
            at + 768,
            "dynamic header",
            "reserved bytes 768..1023 are not zero",
        );
    }
    let has_parent_info =
        !h.parent_unicode_name.is_empty() || h.parent_locators.iter().any(|l| l.code.is_path());
    match f.disk_type {
        DiskType::Differencing if !has_parent_info => report.problem(
            at + 64,
            "dynamic header",
            "differencing disk without a parent name or parent locator",
        ),
        DiskType::Differencing if h.parent_unique_id.is_nil() => report.problem(
            at + 40,
            "dynamic header",
            "differencing disk with a null parent unique id",
        ),
        DiskType::Dynamic if !h.parent_unique_id.is_nil() || !h.parent_unicode_name.is_empty() => {
            report.note(
                at + 40,
                "dynamic header",
                "dynamic disk carries parent fields, which are ignored",
            )
        }
        _ => {}
    }
}

fn check_locators(
    bytes: &[u8],
    h: &DynamicHeader,
    disk_type: DiskType,
    header_at: u64,
    report: &mut CheckReport,
) {
    let len = bytes.len() as u64;
    for (i, l) in h.parent_locators.iter().enumerate() {
        let entry_at = header_at + header::LOCATORS_AT as u64 + i as u64 * 24;
        let name = format!("parent locator {i}");
        if l.code == crate::vhd::PlatformCode::NONE {
            if !l.is_unused() {
                report.problem(entry_at, &name, "unused entry has non-zero fields");
            }
            continue;
        }
        if !l.code.is_known() {
            report.problem(entry_at, &name, format!("unknown platform code {}", l.code));
            continue;
        }
        if disk_type != DiskType::Differencing {
            report.note(
                entry_at,
                &name,
                "locator on a disk that is not differencing",
            );
        }
        let space = match l.reserved_bytes(i as u8, entry_at) {
            Ok(space) => space,
            Err(e) => {
                report.format_problem(&e);
                continue;
            }
        };
        if u64::from(l.data_length) > space {
            report.problem(
                entry_at + 8,
                &name,
                format!(
                    "data length {} exceeds its space of {space} bytes",
                    l.data_length
                ),
            );
        }
        let reserved = space.max(u64::from(l.data_length));
        if l.data_offset == 0
            || l.data_offset
                .checked_add(reserved)
                .is_none_or(|end| end > len)
        {
            report.problem(
                entry_at + 16,
                &name,
                format!(
                    "payload of {reserved} bytes at {} lies outside the {len}-byte file",
                    l.data_offset
                ),
            );
            continue;
        }
        if l.code.is_path() {
            let payload =
                &bytes[l.data_offset as usize..(l.data_offset + u64::from(l.data_length)) as usize];
            if let Err(e) = l.decode_path(i as u8, payload, l.data_offset) {
                report.format_problem(&e);
            }
        }
    }
}

/// blktap's batmap: its checksum and whether its map lies inside the file.
fn check_batmap(bytes: &[u8], file: &SparseFile<'_>, report: &mut CheckReport) {
    let Some(map) = layout::batmap(file) else {
        let at = file.header.table_offset + file.header.bat_bytes();
        if file.footer.is_blktap()
            && let Some(raw) = slice(bytes, at, 512)
            && let Err(e) = BatmapHeader::parse(raw, at)
        {
            report.format_problem(&e);
        }
        return;
    };
    let at = file.header.table_offset + file.header.bat_bytes();
    match slice(bytes, map.map_offset, map.map_bytes()) {
        Some(bits) if !map.verify(bits) => report.problem(
            at + 24,
            "batmap",
            format!("checksum {:#010x} does not match the map", map.checksum),
        ),
        Some(_) => {}
        None => report.problem(
            at + 8,
            "batmap",
            format!("map at {} lies outside the file", map.map_offset),
        ),
    }
}

/// Entries past the disk's last block are ignored (oversized tables are common), but a disk
/// of size 0 with allocated blocks has lost its size, not merely grown a large table.
fn check_ignored_entries(
    bat: &Bat,
    h: &DynamicHeader,
    current_size: u64,
    footer_at: u64,
    report: &mut CheckReport,
) {
    let needed = h.blocks_for(current_size);
    let ignored = bat
        .allocated(bat.len())
        .skip_while(|&(index, _)| u64::from(index) < needed);
    if current_size == 0 {
        let count = ignored.count();
        if count > 0 {
            report.problem(
                footer_at + 48,
                "footer",
                format!("current_size is 0, but {count} BAT entries are allocated"),
            );
        }
        return;
    }
    for (index, _) in ignored {
        report.note(
            h.table_offset + u64::from(index) * 4,
            "BAT",
            format!("entry {index} past the disk's {needed} blocks is allocated and ignored"),
        );
    }
}
