//! Changed-block sets, computed from the BATs alone (never from data), the way XAPI computes
//! `export_raw_vdi?base=`: the union of the blocks allocated in every layer that is on one
//! chain but not the other (the symmetric difference, layers keyed by footer UUID).

use std::collections::HashSet;

use uuid::Uuid;

use super::{Chain, VhdLayer};
use crate::vhd::BlockSet;

/// Blocks of the leaf's grid that differ between `leaf` and `base`; with no base, every block
/// allocated anywhere in the leaf's chain.
pub fn changed(leaf: &Chain, base: Option<&Chain>) -> BlockSet {
    let ids = |chain: &Chain| -> HashSet<Uuid> {
        chain
            .layers()
            .iter()
            .map(|l| l.footer().unique_id)
            .collect()
    };
    let leaf_ids = ids(leaf);
    let base_ids = base.map(ids).unwrap_or_default();
    let grid = u64::from(leaf.block_size());
    let mut set = BlockSet::new(leaf.block_count());
    let only_leaf = leaf
        .layers()
        .iter()
        .filter(|l| !base_ids.contains(&l.footer().unique_id));
    let only_base = base
        .into_iter()
        .flat_map(|b| b.layers())
        .filter(|l| !leaf_ids.contains(&l.footer().unique_id));
    for layer in only_leaf.chain(only_base) {
        add_allocated(&mut set, layer, grid);
    }
    set
}

/// Add the blocks `layer` allocates, mapped onto a grid of `grid`-byte blocks.
fn add_allocated(set: &mut BlockSet, layer: &VhdLayer, grid: u64) {
    let own = u64::from(layer.block_size());
    let count = layer.block_count();
    if own == grid {
        if layer.header().is_none() {
            (0..count).for_each(|i| set.insert(i));
        } else {
            layer
                .bat()
                .allocated(count)
                .for_each(|(i, _)| set.insert(i));
        }
        return;
    }
    for index in (0..count).filter(|&i| layer.is_allocated(i)) {
        let start = u64::from(index) * own;
        let end = start + own;
        for g in start / grid..end.div_ceil(grid) {
            set.insert(g as u32);
        }
    }
}
