//! A compact set of block indexes: one bit per block of a disk. A 2 TiB disk of 2 MiB blocks
//! is 1 Mi blocks, i.e. 128 KiB of bits, so set operations stay cheap word-wise.

use std::fmt;

#[derive(Clone, PartialEq, Eq, Default)]
pub struct BlockSet {
    words: Vec<u64>,
    /// Number of blocks the set ranges over; indexes at or past it are never members.
    capacity: u32,
}

impl BlockSet {
    pub fn new(capacity: u32) -> BlockSet {
        BlockSet {
            words: vec![0; (capacity as usize).div_ceil(64)],
            capacity,
        }
    }

    /// A set holding every index below `capacity`.
    pub fn full(capacity: u32) -> BlockSet {
        let mut set = BlockSet::new(capacity);
        set.words.fill(u64::MAX);
        set.clear_tail();
        set
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Add `index`; indexes past the capacity are ignored (entries of an oversized BAT).
    pub fn insert(&mut self, index: u32) {
        if index < self.capacity {
            self.words[index as usize / 64] |= 1 << (index % 64);
        }
    }

    pub fn remove(&mut self, index: u32) {
        if index < self.capacity {
            self.words[index as usize / 64] &= !(1 << (index % 64));
        }
    }

    pub fn contains(&self, index: u32) -> bool {
        index < self.capacity && self.words[index as usize / 64] & (1 << (index % 64)) != 0
    }

    pub fn count(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// In-place union; the capacity becomes the larger of the two.
    pub fn union_with(&mut self, other: &BlockSet) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        self.capacity = self.capacity.max(other.capacity);
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            *mine |= theirs;
        }
    }

    /// Members in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let bit = bits.trailing_zeros();
                    bits &= bits - 1;
                    w as u32 * 64 + bit
                })
            })
        })
    }

    fn clear_tail(&mut self) {
        let used = self.capacity % 64;
        if used != 0
            && let Some(last) = self.words.last_mut()
        {
            *last &= (1u64 << used) - 1;
        }
    }
}

impl FromIterator<u32> for BlockSet {
    /// Collects into a set whose capacity is one past the largest member.
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> BlockSet {
        let members: Vec<u32> = iter.into_iter().collect();
        let capacity = members.iter().max().map_or(0, |m| m + 1);
        let mut set = BlockSet::new(capacity);
        members.into_iter().for_each(|m| set.insert(m));
        set
    }
}

impl fmt::Debug for BlockSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockSet({}/{}: ", self.count(), self.capacity)?;
        f.debug_list().entries(self.iter().take(32)).finish()?;
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn full_set_has_no_bits_past_capacity() {
        let set = BlockSet::full(70);
        assert_eq!(set.count(), 70);
        assert!(set.contains(69));
        assert!(!set.contains(70));
        assert_eq!(set.iter().last(), Some(69));
    }

    proptest! {
        #[test]
        fn behaves_like_a_btreeset(a in proptest::collection::vec(0u32..300, 0..80),
                                   b in proptest::collection::vec(0u32..500, 0..80)) {
            let mut set = BlockSet::new(300);
            a.iter().for_each(|&i| set.insert(i));
            let model: BTreeSet<u32> = a.iter().copied().collect();
            prop_assert_eq!(set.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(set.count() as usize, model.len());
            let other: BlockSet = b.iter().copied().collect();
            set.union_with(&other);
            let union: BTreeSet<u32> = model.union(&b.iter().copied().collect()).copied().collect();
            prop_assert_eq!(set.iter().collect::<Vec<_>>(), union.into_iter().collect::<Vec<_>>());
        }
    }
}
