//! VHD streams as XAPI sends (`GET /export_raw_vdi?format=vhd`) and accepts them
//! (`PUT /import_raw_vdi?format=vhd`): a dynamic or differencing VHD laid out so that it can be
//! written and read front to back, whose exact length is known before the first block.
//!
//! [`encode`] and [`decode`] are sans-IO (floor 1): bytes and values in, bytes and values out,
//! no files, sockets or clocks. `source` and `export` turn chains on disk into streams,
//! [`apply`] and [`mod@feed`] write streams onto disks (floor 2).

pub mod apply;
pub mod decode;
pub mod encode;
mod error;
pub(crate) mod export;
pub mod extents;
pub mod feed;
mod layout;
pub(crate) mod source;

pub use decode::{StreamDecoder, StreamEvent};
pub use encode::{EncodeParams, Frames, ParentInfo, StreamEncoder};
pub use error::StreamError;
pub use export::ChainExport;
pub use feed::{FeedError, FeedReport, feed};

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
