//! Differencing chains: a leaf and its parents down to a dynamic or fixed root, resolved the way
//! XAPI, blktap and Xen Orchestra find parents.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{Damage, ImageError, ImageErrorKind, VhdLayer};
use crate::vhd::DiskType;

/// Deeper chains are refused: XAPI coalesces long before this, so it means a loop or damage.
pub const MAX_CHAIN_DEPTH: usize = 256;

/// Layers from the leaf (index 0) to the root (last).
#[derive(Debug)]
pub struct Chain {
    layers: Vec<VhdLayer>,
}

impl Chain {
    /// Open `path` and every parent it names, refusing damaged files.
    pub fn open(path: &Path) -> Result<Chain, ImageError> {
        Chain::open_with(path, Damage::Refuse)
    }

    /// Open `path` and every parent it names, applying `damage` to each layer.
    pub fn open_with(path: &Path, damage: Damage) -> Result<Chain, ImageError> {
        let mut layers = vec![VhdLayer::open_with(path, damage)?];
        let mut seen = HashSet::from([canonical(path)]);
        loop {
            let child = layers.last().expect("the chain starts with the leaf");
            if child.disk_type() != DiskType::Differencing {
                break;
            }
            if layers.len() >= MAX_CHAIN_DEPTH {
                return Err(ImageError::new(
                    path,
                    ImageErrorKind::ChainTooDeep(MAX_CHAIN_DEPTH),
                ));
            }
            let parent = resolve_parent(child, damage)?;
            if !seen.insert(canonical(parent.path())) {
                return Err(ImageError::new(
                    child.path(),
                    ImageErrorKind::ChainCycle(parent.path().to_path_buf()),
                ));
            }
            layers.push(parent);
        }
        Ok(Chain { layers })
    }

    /// A chain from layers already opened (leaf first), checking the parent UUID links.
    pub fn from_layers(layers: Vec<VhdLayer>) -> Result<Chain, ImageError> {
        let Some(first) = layers.first() else {
            return Err(ImageError::new(
                Path::new("<empty chain>"),
                ImageErrorKind::Invalid("a chain needs at least one layer".into()),
            ));
        };
        if layers.len() > MAX_CHAIN_DEPTH {
            return Err(ImageError::new(
                first.path(),
                ImageErrorKind::ChainTooDeep(MAX_CHAIN_DEPTH),
            ));
        }
        for pair in layers.windows(2) {
            check_link(&pair[0], &pair[1])?;
        }
        let root = layers.last().expect("not empty");
        if root.disk_type() == DiskType::Differencing {
            return Err(ImageError::new(
                root.path(),
                ImageErrorKind::Invalid("the chain's last layer is a differencing disk".into()),
            ));
        }
        Ok(Chain { layers })
    }

    pub fn layers(&self) -> &[VhdLayer] {
        &self.layers
    }

    pub fn leaf(&self) -> &VhdLayer {
        &self.layers[0]
    }

    pub fn virtual_size(&self) -> u64 {
        self.leaf().virtual_size()
    }

    pub fn block_size(&self) -> u32 {
        self.leaf().block_size()
    }

    pub fn block_count(&self) -> u32 {
        self.leaf().block_count()
    }

    /// True when every layer uses the leaf's block size, so blocks line up across layers.
    pub fn blocks_align(&self) -> bool {
        self.layers
            .iter()
            .all(|l| l.block_size() == self.block_size())
    }
}

fn check_link(child: &VhdLayer, parent: &VhdLayer) -> Result<(), ImageError> {
    let expected = child
        .header()
        .map(|h| h.parent_unique_id)
        .unwrap_or_default();
    let found = parent.footer().unique_id;
    if child.disk_type() != DiskType::Differencing || expected != found {
        return Err(ImageError::new(
            child.path(),
            ImageErrorKind::ParentUuidMismatch {
                parent: parent.path().to_path_buf(),
                found,
                expected,
            },
        ));
    }
    Ok(())
}

/// Try the parent locators first (MacX, then W2ku/W2ru), then the header's parent name, each
/// relative to the child's directory or absolute, then the same basenames next to the child.
/// The first candidate whose footer UUID matches the child's parent UUID wins.
fn resolve_parent(child: &VhdLayer, damage: Damage) -> Result<VhdLayer, ImageError> {
    let candidates = parent_candidates(child);
    if candidates.is_empty() {
        return Err(ImageError::new(child.path(), ImageErrorKind::NoParentInfo));
    }
    let mut mismatch = None;
    for candidate in &candidates {
        if !candidate.is_file() {
            continue;
        }
        let parent = VhdLayer::open_with(candidate, damage)?;
        match check_link(child, &parent) {
            Ok(()) => return Ok(parent),
            Err(e) => mismatch = Some(e),
        }
    }
    Err(mismatch.unwrap_or_else(|| {
        let expected = child
            .header()
            .map(|h| h.parent_unique_id)
            .unwrap_or_default();
        ImageError::new(
            child.path(),
            ImageErrorKind::ParentMissing {
                parent: expected.to_string(),
                tried: candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
        )
    }))
}

fn parent_candidates(child: &VhdLayer) -> Vec<PathBuf> {
    let dir = child.path().parent().unwrap_or(Path::new("."));
    let mut names: Vec<String> = Vec::new();
    let mut locators = child.parent_locator_paths();
    // MacX before the UTF-16 Windows paths.
    locators.sort_by_key(|(i, _)| {
        let code = child.header().map(|h| h.parent_locators[*i as usize].code);
        (code != Some(crate::vhd::PlatformCode::MACX), *i)
    });
    names.extend(locators.into_iter().filter_map(|(_, p)| p.ok()));
    if let Some(h) = child.header()
        && !h.parent_unicode_name.is_empty()
    {
        names.push(h.parent_unicode_name.clone());
    }
    let mut out: Vec<PathBuf> = Vec::new();
    let mut push = |p: PathBuf| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    for name in &names {
        let unix = name.replace('\\', "/");
        let as_path = Path::new(&unix);
        if as_path.is_absolute() {
            push(as_path.to_path_buf());
        } else if !looks_like_windows_drive(&unix) {
            push(dir.join(as_path));
        }
    }
    for name in &names {
        let unix = name.replace('\\', "/");
        if let Some(base) = Path::new(&unix).file_name() {
            push(dir.join(base));
        }
    }
    out
}

fn looks_like_windows_drive(path: &str) -> bool {
    let b = path.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}
