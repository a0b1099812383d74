//! VHD files on disk: open (memory-mapped) and read single layers, resolve differencing chains,
//! read the sector-exact synthetic view, compute changed-block sets, check structure, and write.

mod chain;
mod changed;
pub mod check;
mod error;
mod layer;
mod layout;
mod mapping;
mod raw;
mod view;
mod writeback;
mod writer;

pub use chain::{Chain, MAX_CHAIN_DEPTH};
pub use changed::changed;
pub use error::{ImageError, ImageErrorKind};
pub use layer::{BlockState, Damage, LocatedFooter, VhdLayer, locate_footer};
pub use raw::{RawSink, write_raw};
pub use view::BlockData;
pub use writeback::Writeback;
pub use writer::{CreateOptions, ParentLink, VhdWriter, create};
