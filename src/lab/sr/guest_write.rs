//! Guest writes onto a VDI's leaf. The leaf records presence per 512-byte sector, so a write
//! that starts or ends inside a sector must first fill the rest of that sector with what the
//! guest sees there now (read through the chain), or the parent's bytes in it would be lost.

use std::ops::Range;
use std::path::Path;

use crate::image::{Chain, ImageError, VhdWriter};
use crate::vhd::SECTOR_SIZE;

const SECTOR: usize = SECTOR_SIZE as usize;

/// Write `data` at guest `offset` of the VDI whose leaf is `leaf`. The caller has checked that
/// the range lies inside the virtual size and holds the VDI's lock.
pub(super) fn write(leaf: &Path, offset: u64, data: &[u8]) -> Result<(), ImageError> {
    if data.is_empty() {
        return Ok(());
    }
    let pieces = Pieces::split(offset, data.len());
    // Read both edge sectors before writing anything, so each sees the pre-write content.
    let edges = if pieces.head.is_some() || pieces.tail.is_some() {
        let chain = Chain::open(leaf)?;
        let fill = |edge: &Option<Edge>| edge.as_ref().map(|e| e.merged(&chain, data));
        (fill(&pieces.head), fill(&pieces.tail))
    } else {
        (None, None)
    };
    let mut writer = VhdWriter::open(leaf)?;
    if let (Some(edge), Some(sector)) = (&pieces.head, &edges.0) {
        writer.write_sectors(edge.sector, sector)?;
    }
    if !pieces.middle.is_empty() {
        let at = offset + pieces.middle.start as u64;
        writer.write_sectors(at, &data[pieces.middle.clone()])?;
    }
    if let (Some(edge), Some(sector)) = (&pieces.tail, &edges.1) {
        writer.write_sectors(edge.sector, sector)?;
    }
    writer.flush()
}

/// A sector only partly covered by the write.
#[derive(Debug, PartialEq, Eq)]
struct Edge {
    /// Guest offset of the sector.
    sector: u64,
    /// Where the written bytes start inside the sector.
    within: usize,
    /// The written bytes, as a range of the write's data.
    data: Range<usize>,
}

impl Edge {
    /// The whole sector: the guest's current bytes with the written ones laid over them.
    fn merged(&self, chain: &Chain, data: &[u8]) -> [u8; SECTOR] {
        let mut sector = [0u8; SECTOR];
        chain.read_at(self.sector, &mut sector);
        let written = &data[self.data.clone()];
        sector[self.within..self.within + written.len()].copy_from_slice(written);
        sector
    }
}

/// A write cut into a partial head sector, whole middle sectors and a partial tail sector.
#[derive(Debug, PartialEq, Eq)]
struct Pieces {
    head: Option<Edge>,
    /// Whole sectors, as a range of the write's data.
    middle: Range<usize>,
    tail: Option<Edge>,
}

impl Pieces {
    fn split(offset: u64, len: usize) -> Pieces {
        let sector_size = SECTOR_SIZE;
        let end = offset.saturating_add(len as u64);
        let head = (!offset.is_multiple_of(sector_size)).then(|| {
            let sector = offset - offset % sector_size;
            Edge {
                sector,
                within: (offset - sector) as usize,
                data: 0..((sector + sector_size).min(end) - offset) as usize,
            }
        });
        let middle_start = head.as_ref().map_or(0, |h| h.data.end);
        let tail_sector = end - end % sector_size;
        // A tail inside the head's sector was already covered by the head.
        let tail = (!end.is_multiple_of(sector_size)
            && tail_sector >= offset + middle_start as u64)
            .then(|| Edge {
                sector: tail_sector,
                within: 0,
                data: (tail_sector - offset) as usize..len,
            });
        let middle_end = tail.as_ref().map_or(len, |t| t.data.start);
        Pieces {
            head,
            middle: middle_start..middle_end,
            tail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_writes_have_no_edges() {
        assert_eq!(
            Pieces::split(1024, 2048),
            Pieces {
                head: None,
                middle: 0..2048,
                tail: None
            }
        );
    }

    #[test]
    fn a_write_inside_one_sector_is_a_single_head_edge() {
        let pieces = Pieces::split(1030, 10);
        assert_eq!(
            pieces.head,
            Some(Edge {
                sector: 1024,
                within: 6,
                data: 0..10
            })
        );
        assert_eq!(pieces.middle, 10..10);
        assert_eq!(pieces.tail, None);
    }

    #[test]
    fn a_write_ending_on_a_boundary_inside_its_first_sector_has_no_tail() {
        let pieces = Pieces::split(1030, 506);
        assert_eq!(pieces.head.unwrap().data, 0..506);
        assert_eq!(pieces.middle, 506..506);
        assert_eq!(pieces.tail, None);
    }

    #[test]
    fn unaligned_on_both_ends_spanning_sectors() {
        let pieces = Pieces::split(1000, 2000);
        assert_eq!(
            pieces.head,
            Some(Edge {
                sector: 512,
                within: 488,
                data: 0..24
            })
        );
        assert_eq!(pieces.middle, 24..1560);
        assert_eq!(
            pieces.tail,
            Some(Edge {
                sector: 2560,
                within: 0,
                data: 1560..2000
            })
        );
    }

    #[test]
    fn aligned_start_with_a_short_tail() {
        let pieces = Pieces::split(512, 100);
        assert_eq!(pieces.head, None);
        assert_eq!(pieces.middle, 0..0);
        assert_eq!(
            pieces.tail,
            Some(Edge {
                sector: 512,
                within: 0,
                data: 0..100
            })
        );
    }

    #[test]
    fn adjacent_edges_in_neighbouring_sectors() {
        let pieces = Pieces::split(500, 30);
        assert_eq!(pieces.head.unwrap().data, 0..12);
        assert_eq!(pieces.middle, 12..12);
        assert_eq!(pieces.tail.unwrap().data, 12..30);
    }
}
