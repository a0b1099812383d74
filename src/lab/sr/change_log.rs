//! Changed block tracking (CBT): per VDI, a log of the 64 KiB blocks written since the log
//! began, chained across snapshots the way SM chains its `<uuid>.cbtlog` files. This module is
//! the model, in memory and without I/O; `change_log_file` keeps it on disk.
//!
//! The chain, after SM's `VDI._cbt_snapshot` and `VDI.list_changed_blocks`:
//! - `enable` gives a VDI an empty log with no parent: a new chain starts.
//! - A snapshot hands the VDI's log over to the snapshot (whose log then covers the writes from
//!   its parent's point to the snapshot), and gives the VDI a fresh empty log whose parent is
//!   the snapshot.
//! - `changed_blocks(from, to)` walks the child links from `from` and ORs the bitmaps of every
//!   log after it, up to and including `to`; it fails if the walk never reaches `to` (VDIs
//!   from different chains, or from before a `disable`/`enable`, which starts a new chain).
//! - Destroying a VDI merges its bitmap into its child's and links its parent to its child,
//!   so the chain stays whole. Destroying only its data (`data_destroy`) keeps the log.
//! - `disable` drops the VDI's log and cuts its parent's link to it.
//!
//! Every change is planned first ([`Plan`]: the logs to write and to delete, in a safe order)
//! so that the caller can make it durable before the model takes it. Memory: one bit per
//! 64 KiB of each logged VDI (512 bytes for 256 MiB, 4 MiB at the VHD maximum of 2040 GiB).

use std::collections::BTreeMap;
use std::ops::Range;

use uuid::Uuid;

use super::error::SrError;

/// The granularity of the logs: XAPI's CBT block.
pub const CBT_BLOCK_SIZE: u64 = 64 << 10;

/// One bit per 64 KiB block, most significant bit first in each byte, as
/// `VDI.list_changed_blocks` returns them: bit *k* covers bytes `[k·64 KiB, (k+1)·64 KiB)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockBitmap {
    bytes: Vec<u8>,
    blocks: u64,
}

impl BlockBitmap {
    /// An empty bitmap for a disk of `virtual_size` bytes.
    pub fn for_size(virtual_size: u64) -> BlockBitmap {
        let blocks = virtual_size.div_ceil(CBT_BLOCK_SIZE);
        BlockBitmap {
            bytes: vec![0; byte_len(blocks)],
            blocks,
        }
    }

    /// The bitmap in `bytes` for a disk of `virtual_size` bytes, if it has exactly the right
    /// length and no bit set past the last block.
    pub fn from_bytes(bytes: Vec<u8>, virtual_size: u64) -> Option<BlockBitmap> {
        let blocks = virtual_size.div_ceil(CBT_BLOCK_SIZE);
        let bitmap = BlockBitmap { bytes, blocks };
        let padding_clear = match bitmap.bytes.last() {
            Some(last) if !blocks.is_multiple_of(8) => last & (0xFF >> (blocks % 8)) == 0,
            _ => true,
        };
        (bitmap.bytes.len() == byte_len(blocks) && padding_clear).then_some(bitmap)
    }

    /// How many 64 KiB blocks the bitmap covers.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn contains(&self, block: u64) -> bool {
        block < self.blocks && self.bytes[(block / 8) as usize] & bit(block) != 0
    }

    /// The blocks set, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.blocks).filter(|&block| self.contains(block))
    }

    pub fn count(&self) -> u64 {
        self.bytes.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    /// Set the bit of every block that `len` bytes at `offset` touch (blocks past the end are
    /// ignored). Returns the range of bytes whose value changed, if any did.
    pub fn mark(&mut self, offset: u64, len: u64) -> Option<Range<usize>> {
        if len == 0 || self.blocks == 0 {
            return None;
        }
        let first = offset / CBT_BLOCK_SIZE;
        let last = (offset.saturating_add(len - 1) / CBT_BLOCK_SIZE).min(self.blocks - 1);
        let mut changed: Option<Range<usize>> = None;
        for block in first..=last {
            let at = (block / 8) as usize;
            if self.bytes[at] & bit(block) == 0 {
                self.bytes[at] |= bit(block);
                let range = changed.get_or_insert(at..at + 1);
                range.end = at + 1;
            }
        }
        changed
    }

    /// Grow to cover a disk of `virtual_size` bytes; the new blocks are clear. Never shrinks.
    pub fn grow(&mut self, virtual_size: u64) {
        let blocks = virtual_size.div_ceil(CBT_BLOCK_SIZE);
        if blocks > self.blocks {
            self.blocks = blocks;
            self.bytes.resize(byte_len(blocks), 0);
        }
    }

    /// Set every block set in `other`, growing to cover it if it is larger.
    pub fn union(&mut self, other: &BlockBitmap) {
        if other.blocks > self.blocks {
            self.blocks = other.blocks;
            self.bytes.resize(byte_len(other.blocks), 0);
        }
        for (mine, theirs) in self.bytes.iter_mut().zip(&other.bytes) {
            *mine |= theirs;
        }
    }
}

impl BlockBitmap {
    /// [`BlockBitmap::union`] with `other` no larger; returns the range of bytes that changed.
    fn union_changed(&mut self, other: &BlockBitmap) -> Option<Range<usize>> {
        let mut changed: Option<Range<usize>> = None;
        for (at, (mine, theirs)) in self.bytes.iter_mut().zip(&other.bytes).enumerate() {
            if *mine | theirs != *mine {
                *mine |= theirs;
                let range = changed.get_or_insert(at..at + 1);
                range.end = at + 1;
            }
        }
        changed
    }
}

fn byte_len(blocks: u64) -> usize {
    usize::try_from(blocks.div_ceil(8)).unwrap_or(usize::MAX)
}

fn bit(block: u64) -> u8 {
    0x80 >> (block % 8)
}

/// One VDI's log: the blocks written between its parent's point in the chain and its own (for
/// a VDI still written, up to now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeLog {
    /// The VDI's virtual size when the log last grew; the bitmap covers it.
    pub virtual_size: u64,
    pub bitmap: BlockBitmap,
    /// The log of the previous point of the chain (a snapshot), if any.
    pub parent: Option<Uuid>,
    /// The log of the next point (the snapshot's VDI, or a later snapshot), if any.
    pub child: Option<Uuid>,
}

impl ChangeLog {
    fn empty(virtual_size: u64) -> ChangeLog {
        ChangeLog {
            virtual_size,
            bitmap: BlockBitmap::for_size(virtual_size),
            parent: None,
            child: None,
        }
    }
}

/// A change to the logs: each step writes a log (`Some`) or deletes it (`None`), in the order
/// in which they are safe to make durable one by one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<(Uuid, Option<ChangeLog>)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    fn write(&mut self, vdi: Uuid, log: ChangeLog) {
        self.steps.push((vdi, Some(log)));
    }

    fn delete(&mut self, vdi: Uuid) {
        self.steps.push((vdi, None));
    }
}

/// Every change log of the SR, by VDI uuid.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChangeLogs {
    logs: BTreeMap<Uuid, ChangeLog>,
}

impl ChangeLogs {
    /// The logs as they were read back, keeping only the links both ends agree on: a change
    /// interrupted half-way through (by a crash) leaves links one end no longer has, and
    /// dropping them can only make a changed-block query fail, never report too few blocks.
    pub fn from_loaded(mut logs: BTreeMap<Uuid, ChangeLog>) -> ChangeLogs {
        let agreed: Vec<(Uuid, bool, bool)> = logs
            .iter()
            .map(|(vdi, log)| {
                let parent_ok = log.parent.is_some_and(|p| {
                    p != *vdi && logs.get(&p).is_some_and(|p| p.child == Some(*vdi))
                });
                let child_ok = log.child.is_some_and(|c| {
                    c != *vdi && logs.get(&c).is_some_and(|c| c.parent == Some(*vdi))
                });
                (*vdi, parent_ok, child_ok)
            })
            .collect();
        for (vdi, parent_ok, child_ok) in agreed {
            let log = logs.get_mut(&vdi).expect("listed above");
            if !parent_ok {
                log.parent = None;
            }
            if !child_ok {
                log.child = None;
            }
        }
        ChangeLogs { logs }
    }

    pub fn get(&self, vdi: Uuid) -> Option<&ChangeLog> {
        self.logs.get(&vdi)
    }

    pub fn contains(&self, vdi: Uuid) -> bool {
        self.logs.contains_key(&vdi)
    }

    pub fn vdis(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.logs.keys().copied()
    }

    /// Take a planned change, once it is durable.
    pub fn apply(&mut self, plan: Plan) {
        for (vdi, log) in plan.steps {
            match log {
                Some(log) => self.logs.insert(vdi, log),
                None => self.logs.remove(&vdi),
            };
        }
    }

    /// Start a log for `vdi`, unless it has one.
    pub fn enable(&self, vdi: Uuid, virtual_size: u64) -> Plan {
        let mut plan = Plan::default();
        if !self.contains(vdi) {
            plan.write(vdi, ChangeLog::empty(virtual_size));
        }
        plan
    }

    /// Drop the log of `vdi` and its parent's link to it.
    pub fn disable(&self, vdi: Uuid) -> Plan {
        let mut plan = Plan::default();
        let Some(log) = self.get(vdi) else {
            return plan;
        };
        if let Some((parent, mut parent_log)) = self.linked(log.parent)
            && parent_log.child == Some(vdi)
        {
            parent_log.child = None;
            plan.write(parent, parent_log);
        }
        plan.delete(vdi);
        plan
    }

    /// `vdi` was snapshotted as `snapshot`: the snapshot takes the VDI's log, and the VDI
    /// starts a fresh one after it. Nothing happens for a VDI without a log.
    pub fn snapshot(&self, vdi: Uuid, snapshot: Uuid) -> Plan {
        let mut plan = Plan::default();
        let Some(log) = self.get(vdi) else {
            return plan;
        };
        let taken = ChangeLog {
            child: Some(vdi),
            ..log.clone()
        };
        let fresh = ChangeLog {
            parent: Some(snapshot),
            child: log.child,
            ..ChangeLog::empty(log.virtual_size)
        };
        // The snapshot's log first, the parent's link to it last: until the parent names it,
        // the links the loader accepts still describe the chain without the snapshot.
        plan.write(snapshot, taken);
        plan.write(vdi, fresh);
        if let Some((parent, mut parent_log)) = self.linked(log.parent) {
            parent_log.child = Some(snapshot);
            plan.write(parent, parent_log);
        }
        plan
    }

    /// `vdi` is destroyed: its blocks go to its child's log, which then follows its parent.
    pub fn remove(&self, vdi: Uuid) -> Plan {
        let mut plan = Plan::default();
        let Some(log) = self.get(vdi) else {
            return plan;
        };
        if let Some((child, mut child_log)) = self.linked(log.child) {
            child_log.bitmap.union(&log.bitmap);
            child_log.virtual_size = child_log.virtual_size.max(log.virtual_size);
            child_log.parent = log.parent;
            plan.write(child, child_log);
        }
        if let Some((parent, mut parent_log)) = self.linked(log.parent) {
            parent_log.child = log.child.filter(|c| self.contains(*c));
            plan.write(parent, parent_log);
        }
        plan.delete(vdi);
        plan
    }

    /// `vdi` grew to `virtual_size` bytes.
    pub fn resize(&self, vdi: Uuid, virtual_size: u64) -> Plan {
        let mut plan = Plan::default();
        if let Some(log) = self.get(vdi)
            && virtual_size > log.virtual_size
        {
            let mut grown = log.clone();
            grown.virtual_size = virtual_size;
            grown.bitmap.grow(virtual_size);
            plan.write(vdi, grown);
        }
        plan
    }

    /// Record a write of `len` bytes at `offset` in the log of `vdi`, if it has one, changing
    /// the model at once. Returns which bitmap bytes changed, or a plan when the write ends
    /// past the log's size (the log was not grown with the disk) and the whole log must be
    /// written again; the plan is taken already.
    pub fn mark(&mut self, vdi: Uuid, offset: u64, len: u64) -> Marked {
        let Some(log) = self.logs.get_mut(&vdi) else {
            return Marked::Untracked;
        };
        let end = offset.saturating_add(len);
        if end > log.virtual_size {
            log.virtual_size = end.next_multiple_of(CBT_BLOCK_SIZE);
            log.bitmap.grow(log.virtual_size);
            log.bitmap.mark(offset, len);
            let mut plan = Plan::default();
            plan.write(vdi, log.clone());
            return Marked::Rewritten(plan);
        }
        match log.bitmap.mark(offset, len) {
            Some(bytes) => Marked::Bytes(bytes),
            None => Marked::Unchanged,
        }
    }

    /// Record the blocks set in `written` (an import's) in the log of `vdi`, as
    /// [`ChangeLogs::mark`] records one write.
    pub fn mark_all(&mut self, vdi: Uuid, written: &BlockBitmap) -> Marked {
        let Some(log) = self.logs.get_mut(&vdi) else {
            return Marked::Untracked;
        };
        if written.blocks() > log.bitmap.blocks() {
            log.virtual_size = written.blocks() * CBT_BLOCK_SIZE;
            log.bitmap.union(written);
            let mut plan = Plan::default();
            plan.write(vdi, log.clone());
            return Marked::Rewritten(plan);
        }
        match log.bitmap.union_changed(written) {
            Some(bytes) => Marked::Bytes(bytes),
            None => Marked::Unchanged,
        }
    }

    /// The blocks written after `from` up to `to`: the union of the bitmaps of the logs after
    /// `from`'s, along its chain, up to `to`'s. As SM does, fails when the two are the same
    /// VDI, when either has no log, or when `to` does not follow `from` in one chain.
    pub fn changed_blocks(&self, from: Uuid, to: Uuid) -> Result<BlockBitmap, SrError> {
        let failed = |reason| SrError::ChangedBlocks { from, to, reason };
        if from == to {
            return Err(failed("Source and target VDI are same"));
        }
        let unrelated = || failed("Source and target VDI are unrelated");
        let (Some(mut log), true) = (self.get(from), self.contains(to)) else {
            return Err(unrelated());
        };
        let mut merged: Option<BlockBitmap> = None;
        // A chain visits each log once; more steps would mean a loop.
        for _ in 0..self.logs.len() {
            let Some((next, next_log)) = log.child.and_then(|c| self.get(c).map(|l| (c, l))) else {
                break;
            };
            match merged.as_mut() {
                Some(merged) => merged.union(&next_log.bitmap),
                None => merged = Some(next_log.bitmap.clone()),
            }
            if next == to {
                return merged.ok_or_else(unrelated);
            }
            log = next_log;
        }
        Err(unrelated())
    }

    fn linked(&self, vdi: Option<Uuid>) -> Option<(Uuid, ChangeLog)> {
        let vdi = vdi?;
        Some((vdi, self.get(vdi)?.clone()))
    }
}

/// What recording a write did to a log.
#[derive(Debug, PartialEq, Eq)]
pub enum Marked {
    /// The VDI has no log.
    Untracked,
    /// Every block was marked already.
    Unchanged,
    /// These bytes of the bitmap changed.
    Bytes(Range<usize>),
    /// The log grew: write it whole.
    Rewritten(Plan),
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn take(logs: &mut ChangeLogs, change: impl FnOnce(&ChangeLogs) -> Plan) {
        let plan = change(logs);
        logs.apply(plan);
    }

    fn mark(logs: &mut ChangeLogs, vdi: Uuid, offset: u64, len: u64) {
        if let Marked::Rewritten(plan) = logs.mark(vdi, offset, len) {
            logs.apply(plan);
        }
    }

    fn blocks(bitmap: &BlockBitmap) -> Vec<u64> {
        bitmap.iter().collect()
    }

    #[test]
    fn bits_are_msb_first_and_marks_report_the_bytes_they_change() {
        let mut bitmap = BlockBitmap::for_size(2 * MIB);
        assert_eq!(bitmap.blocks(), 32);
        assert_eq!(bitmap.as_bytes().len(), 4);
        assert_eq!(bitmap.mark(0, 1), Some(0..1));
        assert_eq!(bitmap.as_bytes()[0], 0x80);
        assert_eq!(bitmap.mark(0, 4096), None);
        // 64 KiB - 1 .. 64 KiB + 1 touches blocks 0 and 1.
        assert_eq!(bitmap.mark(CBT_BLOCK_SIZE - 1, 2), Some(0..1));
        assert_eq!(bitmap.as_bytes()[0], 0xC0);
        assert_eq!(
            bitmap.mark(9 * CBT_BLOCK_SIZE, 8 * CBT_BLOCK_SIZE),
            Some(1..3)
        );
        assert_eq!(blocks(&bitmap), [0, 1, 9, 10, 11, 12, 13, 14, 15, 16]);
        assert_eq!(bitmap.count(), 10);
        // Past the end is ignored, and an empty write marks nothing.
        assert_eq!(bitmap.mark(2 * MIB, 10), None);
        assert_eq!(bitmap.mark(u64::MAX - 3, 10), None);
        assert_eq!(bitmap.mark(5, 0), None);
        assert_eq!(bitmap.mark(31 * CBT_BLOCK_SIZE, u64::MAX), Some(3..4));
        assert!(bitmap.contains(31) && !bitmap.contains(32));
    }

    #[test]
    fn loaded_bitmaps_must_fit_their_size_exactly() {
        assert!(BlockBitmap::from_bytes(vec![0; 4], 2 * MIB).is_some());
        assert!(BlockBitmap::from_bytes(vec![0; 3], 2 * MIB).is_none());
        assert!(BlockBitmap::from_bytes(vec![0; 5], 2 * MIB).is_none());
        // 3 blocks: the low 5 bits of the only byte are padding and must be clear.
        assert!(BlockBitmap::from_bytes(vec![0xE0], 3 * CBT_BLOCK_SIZE).is_some());
        assert!(BlockBitmap::from_bytes(vec![0xE1], 3 * CBT_BLOCK_SIZE).is_none());
        assert!(BlockBitmap::from_bytes(vec![], 0).is_some());
    }

    #[test]
    fn union_and_growth_keep_every_bit() {
        let mut small = BlockBitmap::for_size(2 * MIB);
        small.mark(0, 1);
        let mut large = BlockBitmap::for_size(4 * MIB);
        large.mark(40 * CBT_BLOCK_SIZE, 1);
        small.union(&large);
        assert_eq!(small.blocks(), 64);
        assert_eq!(blocks(&small), [0, 40]);
        small.grow(2 * MIB);
        assert_eq!(small.blocks(), 64);
    }

    #[test]
    fn snapshots_chain_and_changed_blocks_walk_the_chain() {
        let mut logs = ChangeLogs::default();
        let (vdi, s1, s2, s3) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        take(&mut logs, |l| l.enable(vdi, 4 * MIB));
        assert!(logs.enable(vdi, 4 * MIB).is_empty(), "enable is idempotent");
        mark(&mut logs, vdi, 0, 1);
        take(&mut logs, |l| l.snapshot(vdi, s1));
        mark(&mut logs, vdi, 3 * CBT_BLOCK_SIZE, 1);
        take(&mut logs, |l| l.snapshot(vdi, s2));
        mark(&mut logs, vdi, 5 * CBT_BLOCK_SIZE, 1);
        take(&mut logs, |l| l.snapshot(vdi, s3));
        mark(&mut logs, vdi, 7 * CBT_BLOCK_SIZE, 1);

        let changed =
            |logs: &ChangeLogs, from, to| logs.changed_blocks(from, to).map(|b| blocks(&b));
        assert_eq!(changed(&logs, s1, s2).unwrap(), [3]);
        assert_eq!(changed(&logs, s1, s3).unwrap(), [3, 5]);
        assert_eq!(changed(&logs, s2, vdi).unwrap(), [5, 7]);
        assert_eq!(logs.changed_blocks(s1, s2).unwrap().blocks(), 64);
        for (from, to) in [(s2, s1), (vdi, s1), (s1, s1)] {
            assert!(matches!(
                logs.changed_blocks(from, to),
                Err(SrError::ChangedBlocks { .. })
            ));
        }
        let same = logs.changed_blocks(s1, s1).unwrap_err().to_string();
        assert!(same.contains("same"), "{same}");

        // Destroying s2 folds its blocks into s3: s1 -> s3 still answers.
        take(&mut logs, |l| l.remove(s2));
        assert!(!logs.contains(s2));
        assert_eq!(changed(&logs, s1, s3).unwrap(), [3, 5]);
        assert_eq!(changed(&logs, s1, vdi).unwrap(), [3, 5, 7]);
    }

    #[test]
    fn disabling_starts_a_new_chain_that_old_snapshots_cannot_reach() {
        let mut logs = ChangeLogs::default();
        let (vdi, s1, s2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        take(&mut logs, |l| l.enable(vdi, 2 * MIB));
        take(&mut logs, |l| l.snapshot(vdi, s1));
        take(&mut logs, |l| l.disable(vdi));
        assert!(!logs.contains(vdi) && logs.contains(s1));
        assert_eq!(logs.get(s1).unwrap().child, None);
        assert!(logs.disable(vdi).is_empty(), "disable is idempotent");
        take(&mut logs, |l| l.enable(vdi, 2 * MIB));
        take(&mut logs, |l| l.snapshot(vdi, s2));
        let err = logs.changed_blocks(s1, s2).unwrap_err();
        assert!(err.to_string().contains("unrelated"), "{err}");
        // Nothing happens to VDIs without a log.
        let other = Uuid::new_v4();
        assert!(logs.snapshot(other, Uuid::new_v4()).is_empty());
        assert!(logs.remove(other).is_empty());
        assert!(logs.resize(other, 8 * MIB).is_empty());
        assert_eq!(logs.mark(other, 0, 1), Marked::Untracked);
        assert!(logs.changed_blocks(other, s2).is_err());
    }

    #[test]
    fn growth_widens_the_bitmaps_and_writes_past_the_log_grow_it() {
        let mut logs = ChangeLogs::default();
        let (vdi, s1, s2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        take(&mut logs, |l| l.enable(vdi, 2 * MIB));
        take(&mut logs, |l| l.snapshot(vdi, s1));
        take(&mut logs, |l| l.resize(vdi, 4 * MIB));
        assert!(logs.resize(vdi, 4 * MIB).is_empty());
        mark(&mut logs, vdi, 3 * MIB, 1);
        // A write past a log that missed a resize grows it instead of losing the block.
        let Marked::Rewritten(plan) = logs.mark(vdi, 5 * MIB, 1) else {
            panic!("the log should grow");
        };
        logs.apply(plan);
        take(&mut logs, |l| l.snapshot(vdi, s2));
        let changed = logs.changed_blocks(s1, s2).unwrap();
        assert_eq!(blocks(&changed), [48, 80]);
        assert_eq!(changed.blocks(), 81);
    }

    #[test]
    fn links_one_end_lost_are_dropped_on_load() {
        let mut logs = ChangeLogs::default();
        let (vdi, s1, s2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        take(&mut logs, |l| l.enable(vdi, 2 * MIB));
        take(&mut logs, |l| l.snapshot(vdi, s1));
        // A snapshot interrupted after its first two steps: the old parent still names the
        // VDI, not the new snapshot.
        let mut plan = logs.snapshot(vdi, s2);
        plan.steps.truncate(2);
        let mut partial = logs.clone();
        partial.apply(plan);
        let loaded = ChangeLogs::from_loaded(partial.logs.clone());
        assert_eq!(loaded.get(s2).unwrap().parent, None);
        assert_eq!(loaded.get(s1).unwrap().child, None);
        assert!(loaded.changed_blocks(s1, s2).is_err());
        assert!(loaded.changed_blocks(s2, vdi).is_ok());
        // A log naming itself is no chain.
        let mut looped = BTreeMap::new();
        looped.insert(
            vdi,
            ChangeLog {
                parent: Some(vdi),
                child: Some(vdi),
                ..ChangeLog::empty(2 * MIB)
            },
        );
        let loaded = ChangeLogs::from_loaded(looped);
        assert_eq!(loaded.get(vdi).unwrap().child, None);
    }

    /// A history step for the model test.
    #[derive(Debug, Clone)]
    enum Step {
        Write { offset: u64, len: u64 },
        Snapshot,
        DestroySnapshot(usize),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            4 => (0..(8 * MIB), 1..(200 * 1024u64)).prop_map(|(offset, len)| Step::Write { offset, len }),
            1 => Just(Step::Snapshot),
            1 => any::<usize>().prop_map(Step::DestroySnapshot),
        ];
        proptest::collection::vec(step, 0..60)
    }

    proptest! {
        /// The chain answers what a plain record of every write says: the blocks written
        /// between any two points still kept, whatever was destroyed in between.
        #[test]
        fn changed_blocks_equal_the_writes_between_two_points(history in steps()) {
            let size = 8 * MIB;
            let vdi = Uuid::new_v4();
            let mut logs = ChangeLogs::default();
            take(&mut logs, |l| l.enable(vdi, size));
            // Model: every write's blocks with the time it happened; snapshots by time.
            let mut writes: Vec<(usize, BTreeSet<u64>)> = Vec::new();
            let mut points: Vec<(usize, Uuid)> = Vec::new();
            for (time, step) in history.into_iter().enumerate() {
                match step {
                    Step::Write { offset, len } => {
                        let end = (offset + len).min(size);
                        mark(&mut logs, vdi, offset, end - offset);
                        let touched = (offset / CBT_BLOCK_SIZE..=(end - 1) / CBT_BLOCK_SIZE).collect();
                        writes.push((time, touched));
                    }
                    Step::Snapshot => {
                        let snapshot = Uuid::new_v4();
                        take(&mut logs, |l| l.snapshot(vdi, snapshot));
                        points.push((time, snapshot));
                    }
                    Step::DestroySnapshot(pick) if !points.is_empty() => {
                        let (_, gone) = points.remove(pick % points.len());
                        take(&mut logs, |l| l.remove(gone));
                    }
                    Step::DestroySnapshot(_) => {}
                }
            }
            let now = usize::MAX;
            let mut all: Vec<(usize, Uuid)> = points.clone();
            all.push((now, vdi));
            for (i, &(t_from, from)) in all.iter().enumerate() {
                for &(t_to, to) in &all[i + 1..] {
                    let expected: BTreeSet<u64> = writes
                        .iter()
                        .filter(|(t, _)| *t > t_from && *t < t_to)
                        .flat_map(|(_, b)| b.iter().copied())
                        .collect();
                    let got = logs.changed_blocks(from, to).unwrap();
                    prop_assert_eq!(got.iter().collect::<BTreeSet<u64>>(), expected);
                    prop_assert_eq!(got.blocks(), size / CBT_BLOCK_SIZE);
                    prop_assert!(logs.changed_blocks(to, from).is_err());
                }
            }
        }
    }
}
