//! Coalescing: what XenServer's storage garbage collector does to keep chains short. Every
//! snapshot or clone freezes a leaf into a hidden parent, so a VDI replicated every few
//! minutes would otherwise grow a layer per cycle and reach the 256-level chain limit within
//! a day. Once a chain is deeper than [`COALESCE_DEPTH`], each run of hidden files in which
//! every file but the top one has exactly one child, itself hidden, is merged into a single
//! file that takes the top file's name and uuid and builds on the run's bottom parent.
//!
//! Why this keeps every view and every delta the same: hidden files never gain children (only
//! a leaf is ever frozen), and a run's lower files have one hidden child each, so every chain
//! that holds one file of a run holds all the files above it, and the merged file (each
//! sector from the topmost file of the run that has it) reads the same through any chain.
//! The symmetric difference of two chains (`image::changed`) contains either the whole run
//! or none of it, and the merged file allocates exactly the union of its blocks.
//!
//! Crash safety: the merged file is written under a fresh name and renamed over the top file
//! only when complete and durable; the run's lower files are then unreferenced, and a sweep
//! deletes them (or, after a crash before the rename, the unreferenced merged file).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use uuid::Uuid;

use super::error::{Context, Operation, SrError, image_error};
use super::index::Index;
use super::layout::vhd_file_name;
use crate::fsio::atomic;
use crate::image::{BlockState, Chain, CreateOptions, ParentLink, VhdLayer, VhdWriter, create};
use crate::vhd::{self, DiskType, SECTOR_SIZE};

/// Chains up to this many files are left alone: coalescing copies data, so it waits until a
/// run long enough to be worth one copy has built up.
pub(super) const COALESCE_DEPTH: usize = 32;

/// A run to merge: file names from the bottom (the oldest) to the top.
type Run = Vec<String>;

/// Merge the runs of the SR's chains if any chain is deeper than `max_depth`. Returns the
/// number of files merged away; the caller sweeps them.
pub(super) fn coalesce(dir: &Path, index: &Index, max_depth: usize) -> Result<usize, SrError> {
    let op = Operation::Coalesce;
    let mut chains = Vec::with_capacity(index.vdis.len());
    for (vdi, record) in &index.vdis {
        let chain = Chain::open(&dir.join(&record.leaf)).map_err(image_error(op, *vdi))?;
        chains.push((*vdi, chain));
    }
    if chains
        .iter()
        .all(|(_, chain)| chain.layers().len() <= max_depth)
    {
        return Ok(0);
    }
    let leaves: HashSet<&str> = index.vdis.values().map(|r| r.leaf.as_str()).collect();
    let mut merged = 0;
    for (at, run) in runs(&chains, &leaves) {
        let (vdi, chain) = &chains[at];
        let layers: Vec<&VhdLayer> = chain
            .layers()
            .iter()
            .filter(|layer| run.contains(&file_name(layer)))
            .rev()
            .collect();
        merge(dir, &layers, *vdi)?;
        merged += layers.len() - 1;
    }
    Ok(merged)
}

fn file_name(layer: &VhdLayer) -> String {
    layer
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The runs of at least two files, each with the position in `chains` of a chain that holds
/// it. Chains list their layers leaf first.
fn runs(chains: &[(Uuid, Chain)], leaves: &HashSet<&str>) -> Vec<(usize, Run)> {
    let mut children: HashMap<String, HashSet<String>> = HashMap::new();
    let mut parent_of: HashMap<String, String> = HashMap::new();
    for (_, chain) in chains {
        let names: Vec<String> = chain.layers().iter().map(file_name).collect();
        for pair in names.windows(2) {
            children
                .entry(pair[1].clone())
                .or_default()
                .insert(pair[0].clone());
            parent_of.insert(pair[0].clone(), pair[1].clone());
        }
    }
    let hidden = |name: &str| !leaves.contains(name);
    // A file merges into its only child when both are hidden.
    let merges_up = |name: &str| {
        hidden(name)
            && children
                .get(name)
                .is_some_and(|c| c.len() == 1 && c.iter().all(|child| hidden(child)))
    };
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    for (at, (_, chain)) in chains.iter().enumerate() {
        for layer in chain.layers() {
            let top = file_name(layer);
            // A run's top is a hidden file that does not itself merge up, over one that does.
            let starts_run = hidden(&top)
                && !merges_up(&top)
                && parent_of.get(&top).is_some_and(|p| merges_up(p));
            if !starts_run || !seen.insert(top.clone()) {
                continue;
            }
            let mut run = vec![top.clone()];
            let mut below = parent_of.get(&top);
            while let Some(parent) = below.filter(|p| merges_up(p)) {
                run.push(parent.clone());
                below = parent_of.get(parent);
            }
            run.reverse();
            found.push((at, run));
        }
    }
    found
}

/// Write the merge of `layers` (bottom first) and rename it over the top layer's file.
fn merge(dir: &Path, layers: &[&VhdLayer], vdi: Uuid) -> Result<(), SrError> {
    let op = Operation::Coalesce;
    let (bottom, top) = (layers[0], layers[layers.len() - 1]);
    let parent = match (bottom.disk_type(), bottom.header()) {
        (DiskType::Differencing, Some(header)) => Some(ParentLink {
            uuid: header.parent_unique_id,
            timestamp: header.parent_timestamp,
            relative_path: header.parent_unicode_name.clone(),
        }),
        _ => None,
    };
    let options = CreateOptions {
        virtual_size: top.virtual_size(),
        block_size: top.block_size(),
        uuid: top.footer().unique_id,
        // Children record their parent's time stamp; the merged file stands in for `top`.
        timestamp: top.footer().timestamp,
        parent,
    };
    // A fresh name that no chain references: a crash before the rename leaves sweepable garbage.
    let scratch = dir.join(vhd_file_name(Uuid::new_v4()));
    create(&scratch, &options).map_err(image_error(op, vdi))?;
    let mut writer = VhdWriter::open(&scratch).map_err(image_error(op, vdi))?;
    let block_size = top.block_size() as usize;
    let mut data = vec![0u8; block_size];
    let mut present = vec![0u8; block_size / SECTOR_SIZE as usize / 8];
    for index in 0..top.block_count() {
        data.fill(0);
        present.fill(0);
        let mut any = false;
        for layer in layers {
            any |= overlay(layer, index, &mut data, &mut present);
        }
        if any {
            writer
                .write_block(index, &present, &data)
                .map_err(image_error(op, vdi))?;
        }
    }
    writer.set_hidden(true).map_err(image_error(op, vdi))?;
    writer.flush().map_err(image_error(op, vdi))?;
    drop(writer);
    atomic::publish(&scratch, top.path()).map_err(Context::vdi(op, vdi).atomic())
}

/// Copy the sectors `layer` holds of block `index` over `data`, marking them in `present`.
fn overlay(layer: &VhdLayer, index: u32, data: &mut [u8], present: &mut [u8]) -> bool {
    let len = layer.block_len(index) as usize;
    let sectors = len.div_ceil(SECTOR_SIZE as usize) as u32;
    match layer.block_state(index) {
        BlockState::Unallocated => false,
        BlockState::Full { data_offset } => {
            layer.copy_out(data_offset, &mut data[..len]);
            vhd::bitmap::set_range(present, 0, sectors);
            true
        }
        BlockState::Partial {
            bitmap,
            data_offset,
        } => {
            for run in vhd::bitmap::runs(bitmap, 0..sectors).filter(|r| r.present) {
                let from = run.start as usize * SECTOR_SIZE as usize;
                let to = (from + run.len as usize * SECTOR_SIZE as usize).min(len);
                layer.copy_out(data_offset + from as u64, &mut data[from..to]);
                vhd::bitmap::set_range(present, run.start, run.len);
            }
            true
        }
    }
}
