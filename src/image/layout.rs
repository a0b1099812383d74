//! Where each structure of a VHD file sits, and the structural findings that make its content
//! ambiguous or wrong: unknown format versions, a wrong header `data_offset`, a BAT too short
//! for the disk or lying over other metadata, blocks past the end or over metadata or each
//! other. One implementation, shared by `check` (which reports every finding as a problem)
//! and `VhdLayer::open` (which refuses a file that has any, unless told to read it anyway).

use std::borrow::Cow;

use crate::vhd::bat::{BlockLayout, Extent};
use crate::vhd::{
    Bat, DynamicHeader, ErrorKind, Footer, FormatError, HEADER_SIZE, PlatformCode, SECTOR_SIZE,
    Structure, batmap::BatmapHeader, footer, header,
};

/// Block findings past this many are not collected: a table of a million entries pointing at
/// one block would otherwise make a million messages.
const BLOCK_FINDING_LIMIT: usize = 64;

/// Which findings to collect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Only what makes the guest content ambiguous or wrong. Two parent locators sharing
    /// bytes are left out: locators only name the parent, which is verified by its UUID, and
    /// the `data_space` unit heuristic can overstate a locator's reach.
    Read,
    /// Everything, for `check`.
    Check,
}

/// The parsed structures of a dynamic or differencing file, and its bytes.
pub(crate) struct SparseFile<'a> {
    pub bytes: &'a [u8],
    pub footer: &'a Footer,
    /// Offset of the footer in use: the end footer, or 0 when it fell back to the copy.
    pub footer_at: u64,
    pub header: &'a DynamicHeader,
    pub bat: &'a Bat,
}

/// The footer of any disk type: its file format version must be the one version there is.
pub(crate) fn footer_findings(footer: &Footer, footer_at: u64) -> Vec<FormatError> {
    let mut findings = Vec::new();
    if footer.format_version != footer::FORMAT_VERSION {
        findings.push(FormatError::new(
            ErrorKind::BadValue,
            Structure::Footer,
            "format_version",
            footer_at + 12,
            format_args!("{:#010x}", footer.format_version),
            format_args!("{:#010x}", footer::FORMAT_VERSION),
        ));
    }
    findings
}

/// The findings of a dynamic or differencing file beyond its footer, in file order of the
/// fields at fault, with at most [`BLOCK_FINDING_LIMIT`] about blocks.
pub(crate) fn sparse_findings(file: &SparseFile<'_>, scope: Scope) -> Vec<FormatError> {
    let h = file.header;
    let at = file.footer.data_offset;
    let field = |kind, name, rel: u64, found: String, expected: String| {
        FormatError::new(kind, Structure::Header, name, at + rel, found, expected)
    };
    let mut findings = Vec::new();
    // The spec's text says 0xFFFFFFFF; every tool writes 64 bits of ones. Both are accepted.
    if h.data_offset != header::UNUSED_DATA_OFFSET && h.data_offset != 0xFFFF_FFFF {
        findings.push(field(
            ErrorKind::BadValue,
            "data_offset",
            8,
            format!("{:#x}", h.data_offset),
            "all ones (unused)".into(),
        ));
    }
    if h.header_version != header::HEADER_VERSION {
        findings.push(field(
            ErrorKind::BadValue,
            "header_version",
            24,
            format!("{:#010x}", h.header_version),
            format!("{:#010x}", header::HEADER_VERSION),
        ));
    }
    let needed = h.blocks_for(file.footer.current_size);
    if u64::from(h.max_table_entries) < needed {
        findings.push(field(
            ErrorKind::BadValue,
            "max_table_entries",
            28,
            format!(
                "a BAT that covers {} blocks of {} bytes",
                h.max_table_entries, h.block_size
            ),
            format!(
                "at least the {needed} entries current_size {} needs",
                file.footer.current_size
            ),
        ));
    }
    let placed = metadata(file);
    findings.extend(metadata_overlaps(&placed, scope));
    let extents: Vec<Extent> = placed.into_iter().map(|p| p.extent).collect();
    let layout = BlockLayout {
        table_offset: h.table_offset,
        block_size: h.block_size,
        bitmap_size: h.bitmap_size(),
        current_size: file.footer.current_size,
        file_len: file.bytes.len() as u64,
    };
    // Header and metadata findings are few (a dozen structures); only blocks need a limit.
    findings.extend(
        file.bat
            .check_layout(&layout, &extents, BLOCK_FINDING_LIMIT),
    );
    findings
}

/// A metadata extent and the field that put it there, which a finding about it names.
struct Placed {
    extent: Extent,
    structure: Structure,
    field: &'static str,
    offset: u64,
}

/// Every metadata structure the file holds, in the order in which blame is assigned: of two
/// overlapping structures, the one listed later is the one whose placing field is named.
fn metadata(file: &SparseFile<'_>) -> Vec<Placed> {
    let len = file.bytes.len() as u64;
    let h = file.header;
    let header_at = file.footer.data_offset;
    let place = |start: u64, end: u64, what: Cow<'static, str>, structure, field, offset| Placed {
        extent: Extent { start, end, what },
        structure,
        field,
        offset,
    };
    let mut out = vec![place(
        0,
        SECTOR_SIZE,
        "footer copy".into(),
        Structure::Footer,
        "copy",
        0,
    )];
    if file.footer_at != 0 {
        out.push(place(
            file.footer_at,
            len,
            "footer".into(),
            Structure::Footer,
            "position",
            file.footer_at,
        ));
    }
    out.push(place(
        header_at,
        header_at + HEADER_SIZE as u64,
        "dynamic header".into(),
        Structure::Footer,
        "data_offset",
        file.footer_at + 16,
    ));
    out.push(place(
        h.table_offset,
        h.table_offset.saturating_add(h.bat_bytes()),
        "BAT".into(),
        Structure::Header,
        "table_offset",
        header_at + 16,
    ));
    if let Some(map) = batmap(file) {
        let at = h.table_offset + h.bat_bytes();
        out.push(place(
            at,
            at + SECTOR_SIZE,
            "batmap header".into(),
            Structure::Batmap,
            "position",
            at,
        ));
        if map
            .map_offset
            .checked_add(map.map_bytes())
            .is_some_and(|end| end <= len)
        {
            out.push(place(
                map.map_offset,
                map.map_offset + map.map_bytes(),
                "batmap".into(),
                Structure::Batmap,
                "batmap_offset",
                at + 8,
            ));
        }
    }
    for (i, l) in h.parent_locators.iter().enumerate() {
        let entry_at = header_at + header::LOCATORS_AT as u64 + i as u64 * 24;
        if l.code == PlatformCode::NONE || !l.code.is_known() {
            continue;
        }
        let Ok(space) = l.reserved_bytes(i as u8, entry_at) else {
            continue;
        };
        let reserved = space.max(u64::from(l.data_length));
        match l.data_offset.checked_add(reserved) {
            Some(end) if l.data_offset != 0 && end <= len => out.push(place(
                l.data_offset,
                end,
                format!("parent locator {i}").into(),
                Structure::ParentLocator(i as u8),
                "data_offset",
                entry_at + 16,
            )),
            _ => {}
        }
    }
    out
}

/// blktap's batmap header right after the BAT, when the creator is blktap and it parses.
pub(crate) fn batmap(file: &SparseFile<'_>) -> Option<BatmapHeader> {
    if !file.footer.is_blktap() {
        return None;
    }
    let at = file
        .header
        .table_offset
        .checked_add(file.header.bat_bytes())?;
    let raw = file.bytes.get(usize::try_from(at).ok()?..)?.get(..512)?;
    BatmapHeader::parse(raw, at).ok().flatten()
}

/// Every pair of metadata structures that share bytes (at most a dozen structures, so pairs).
fn metadata_overlaps(placed: &[Placed], scope: Scope) -> Vec<FormatError> {
    let mut findings = Vec::new();
    for (j, later) in placed.iter().enumerate() {
        for earlier in &placed[..j] {
            let (a, b) = (&earlier.extent, &later.extent);
            let both_locators = matches!(
                (earlier.structure, later.structure),
                (Structure::ParentLocator(_), Structure::ParentLocator(_))
            );
            if b.start < a.end && a.start < b.end && !(both_locators && scope == Scope::Read) {
                findings.push(FormatError::new(
                    ErrorKind::Overlap,
                    later.structure,
                    later.field,
                    later.offset,
                    format_args!(
                        "{} at bytes {}..{} overlaps {} at bytes {}..{}",
                        b.what, b.start, b.end, a.what, a.start, a.end
                    ),
                    "structures that do not share bytes",
                ));
            }
        }
    }
    findings
}
