//! Sector bitmaps: one bit per sector of a block, most significant bit first. In a dynamic
//! disk a set bit means the sector holds data; in a differencing disk it means the sector is
//! present in this layer rather than in the parent.

/// Whether sector `sector` is marked in `bitmap`. Bits beyond the bitmap read as clear.
pub fn is_set(bitmap: &[u8], sector: u32) -> bool {
    bitmap
        .get(sector as usize / 8)
        .is_some_and(|byte| byte & (0x80 >> (sector % 8)) != 0)
}

/// Mark sectors `start..start + count`.
pub fn set_range(bitmap: &mut [u8], start: u32, count: u32) {
    for sector in start..start.saturating_add(count) {
        if let Some(byte) = bitmap.get_mut(sector as usize / 8) {
            *byte |= 0x80 >> (sector % 8);
        }
    }
}

/// Whether the first `sectors` bits are all set.
pub fn is_full(bitmap: &[u8], sectors: u32) -> bool {
    all_bits(bitmap, sectors, 0xFF)
}

/// Whether the first `sectors` bits are all clear.
pub fn is_empty(bitmap: &[u8], sectors: u32) -> bool {
    all_bits(bitmap, sectors, 0x00)
}

fn all_bits(bitmap: &[u8], sectors: u32, whole: u8) -> bool {
    let whole_bytes = sectors as usize / 8;
    let Some(head) = bitmap.get(..whole_bytes) else {
        return false;
    };
    head.iter().all(|&b| b == whole)
        && (whole_bytes * 8..sectors as usize).all(|s| is_set(bitmap, s as u32) == (whole == 0xFF))
}

/// A maximal run of sectors that are all set (`present`) or all clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start: u32,
    pub len: u32,
    pub present: bool,
}

/// The runs of equal bits over `sectors`, skipping whole 0x00 / 0xFF bytes at a time so that
/// full and empty bitmaps cost a byte scan, not a bit walk.
pub fn runs(bitmap: &[u8], sectors: std::ops::Range<u32>) -> Runs<'_> {
    Runs {
        bitmap,
        sectors: sectors.end,
        next: sectors.start,
    }
}

pub struct Runs<'a> {
    bitmap: &'a [u8],
    sectors: u32,
    next: u32,
}

impl Iterator for Runs<'_> {
    type Item = Run;

    fn next(&mut self) -> Option<Run> {
        if self.next >= self.sectors {
            return None;
        }
        let start = self.next;
        let present = is_set(self.bitmap, start);
        let whole = if present { 0xFF } else { 0x00 };
        let mut s = start + 1;
        while s < self.sectors {
            if s.is_multiple_of(8)
                && s + 8 <= self.sectors
                && self.bitmap.get(s as usize / 8) == Some(&whole)
            {
                s += 8;
                continue;
            }
            if is_set(self.bitmap, s) != present {
                break;
            }
            s += 1;
        }
        self.next = s;
        Some(Run {
            start,
            len: s - start,
            present,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msb_first_bit_order() {
        let bitmap = [0b1000_0001, 0];
        assert!(is_set(&bitmap, 0));
        assert!(!is_set(&bitmap, 1));
        assert!(is_set(&bitmap, 7));
        assert!(!is_set(&bitmap, 8));
        assert!(!is_set(&bitmap, 1000), "beyond the bitmap reads as clear");
    }

    #[test]
    fn isolated_bits_inside_a_byte_make_separate_runs() {
        // Sector 100 alone, as in the libvhdi defect: 101..103 must not follow it.
        let mut bitmap = [0u8; 64];
        set_range(&mut bitmap, 0, 8);
        set_range(&mut bitmap, 100, 1);
        let got: Vec<_> = runs(&bitmap, 0..512)
            .map(|r| (r.start, r.len, r.present))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 8, true),
                (8, 92, false),
                (100, 1, true),
                (101, 411, false)
            ]
        );
        let tail: Vec<_> = runs(&bitmap, 99..102)
            .map(|r| (r.start, r.len, r.present))
            .collect();
        assert_eq!(tail, vec![(99, 1, false), (100, 1, true), (101, 1, false)]);
    }

    #[test]
    fn full_and_empty() {
        let full = [0xFF; 512];
        assert!(is_full(&full, 4096));
        assert!(!is_empty(&full, 4096));
        assert_eq!(runs(&full, 0..4096).count(), 1);
        let mut partial = [0u8; 1];
        set_range(&mut partial, 0, 3);
        assert!(is_full(&partial, 3));
        assert!(!is_full(&partial, 4));
        assert!(is_empty(&[0u8; 512], 4096));
        assert!(!is_full(&[0xFF; 2], 17), "too short a bitmap is not full");
    }
}
